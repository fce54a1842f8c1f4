"""A prepared project on the synthetic corpus (corpus -> splits -> 16 kHz audio), built by the real scripts."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
       "OMP_NUM_THREADS": "1"}


def load_script(script: str | Path):
    """A repo script (path relative to the repo, or absolute) imported as a module, to call its functions."""
    path = REPO / script
    spec = importlib.util.spec_from_file_location(f"{path.stem.replace('-', '_')}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_script(script: str, *argv: str) -> None:
    """A repo script's main(argv) in this process: the same work as run_script without an interpreter's start."""
    load_script(script).main(list(argv))


def run_script(script: str, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a repo script as a user would (from another folder); fail with its output if it fails."""
    proc = subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd or REPO.parent, env=ENV,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(root: Path, n_speakers: int = 10, utts_per_emotion: int = 4) -> Path:
    """Synthetic corpus, its 5-fold splits and preprocessed audio under root; returns the config path."""
    from utils.data.synthetic import make_corpus
    make_corpus(root / "corpus", n_speakers=n_speakers, utts_per_emotion=utts_per_emotion, sr=22050)
    config = root / "config.yml"
    config.write_text(f"data_dir:\n  demo: {root / 'corpus'}\nproject_dir: {root / 'project'}\n")
    run_script("train_split_gen/demo.py", "--config", str(config))
    run_script("preprocess_audio/preprocess_audio.py", "--dataset", "demo", "--config", str(config))
    return config
