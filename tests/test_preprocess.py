"""preprocess_audio/preprocess_audio.py on a small synthetic corpus (22.05 kHz, plus stereo and 8 kHz files)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.core.errors import TrustSerError  # noqa: E402
from utils.core.io import write_json  # noqa: E402
from utils.data import preprocessing  # noqa: E402
from utils.data.synthetic import make_corpus  # noqa: E402

SCRIPT = REPO / "preprocess_audio" / "preprocess_audio.py"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # run from a folder other than the repo: the scripts must not depend on the working directory
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def write_config(root: Path) -> Path:
    config = root / "config.yml"
    config.write_text("data_dir:\n  demo: data\n  meld: meld\nproject_dir: out\n")
    return config


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Corpus at 22.05 kHz with one 8 kHz stereo and one 22.05 kHz stereo file, split and preprocessed once."""
    root = tmp_path_factory.mktemp("project")
    config = write_config(root)
    data = make_corpus(root / "data", n_speakers=5, utts_per_emotion=1, sr=22050)
    rng = np.random.default_rng(0)
    sf.write(data / "spk01_F" / "spk01_neu_1.wav", rng.uniform(-0.3, 0.3, (8000, 2)), 8000)
    sf.write(data / "spk02_M" / "spk02_sad_1.wav", rng.uniform(-0.3, 0.3, (22050, 2)), 22050)
    split = run(REPO / "train_split_gen" / "demo.py", "--config", config, cwd=root)
    assert split.returncode == 0, split.stderr
    first = run(SCRIPT, "--dataset", "demo", "--config", config, cwd=root)
    return root, config, data, first


@pytest.mark.slow
def test_outputs_are_16k_mono_with_resampled_lengths(project):
    root, _, data, first = project
    assert first.returncode == 0, first.stderr
    assert "20 written, 0 already preprocessed" in first.stderr
    sources = sorted(data.glob("*/*.wav"))
    outputs = root / "out" / "audio" / "demo"
    assert sorted(p.name for p in outputs.iterdir()) == sorted(p.name for p in sources)
    for source in sources:
        src, out = sf.info(str(source)), sf.info(str(outputs / source.name))
        assert (out.samplerate, out.channels) == (16000, 1)
        assert out.frames == int(np.ceil(src.frames * 16000 / src.samplerate))
    stereo_8k = sf.read(outputs / "spk01_neu_1.wav")[0]
    assert len(stereo_8k) == 16000


@pytest.mark.slow
def test_rerun_skips_everything(project):
    root, config, _, _ = project
    outputs = sorted((root / "out" / "audio" / "demo").iterdir())
    before = [p.stat().st_mtime_ns for p in outputs]
    again = run(SCRIPT, "--dataset", "demo", "--config", config, cwd=root)
    assert again.returncode == 0, again.stderr
    assert "0 written, 20 already preprocessed (skipped), 0 unreadable" in again.stderr
    assert [p.stat().st_mtime_ns for p in outputs] == before


@pytest.mark.slow
def test_bad_input_fails_naming_it_unless_skip_bad(tmp_path):
    config = write_config(tmp_path)
    good, bad = tmp_path / "data" / "good.wav", tmp_path / "data" / "bad.wav"
    good.parent.mkdir()
    sf.write(good, np.zeros(4410, dtype=np.float32), 44100)
    bad.write_bytes(b"RIFF" + bytes(100))
    entries = [["good", "demo_spk01", "F", str(good), "neu"], ["bad", "demo_spk02", "M", str(bad), "sad"]]
    for fold in range(1, 6):
        write_json(tmp_path / "out" / "train_split" / f"demo_fold{fold}.json",
                   {"train": entries[:1], "dev": [], "test": entries[1:]})

    failed = run(SCRIPT, "--dataset", "demo", "--config", config, cwd=tmp_path)
    assert failed.returncode == 2
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 1 of 2 input files are unreadable") and str(bad) in error and "--skip_bad" in error
    assert sf.info(str(tmp_path / "out" / "audio" / "demo" / "good.wav")).frames == 1600

    skipped = run(SCRIPT, "--dataset", "demo", "--config", config, "--skip_bad", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr
    assert "WARNING skipped unreadable input" in skipped.stderr and str(bad) in skipped.stderr
    assert not (tmp_path / "out" / "audio" / "demo" / "bad.wav").exists()


def test_missing_split_file_names_the_split_script_with_the_config_given(tmp_path):
    with pytest.raises(TrustSerError, match=r"demo_fold1.json not found; run first: python3 "
                                            r"train_split_gen/demo.py --generate$"):
        preprocessing.plan_outputs("demo", [tmp_path / "demo_fold1.json"])
    with pytest.raises(TrustSerError, match=r"run first: python3 train_split_gen/crema-d.py --config '/my dir/c.yml'$"):
        preprocessing.plan_outputs("crema_d", [tmp_path / "crema_d_fold1.json"], "/my dir/c.yml")


def test_malformed_split_file(tmp_path):
    write_json(tmp_path / "demo_fold1.json", {"train": [["only", "two"]]})
    with pytest.raises(TrustSerError, match="is not \\[key, speaker, gender, path, label\\]"):
        preprocessing.plan_outputs("demo", [tmp_path / "demo_fold1.json"])
    # preprocessing and training read split files through one reader, with the same checks
    from utils.data.utterances import read_split_file
    write_json(tmp_path / "demo_fold1.json", [])
    with pytest.raises(TrustSerError, match="is not a split file: expected lists under 'train', 'dev' and 'test'"):
        read_split_file(tmp_path / "demo_fold1.json", "demo")
    write_json(tmp_path / "demo_fold1.json", {"train": [], "test": []})
    with pytest.raises(TrustSerError, match="demo_fold1.json has no 'dev' list$"):
        preprocessing.plan_outputs("demo", [tmp_path / "demo_fold1.json"])


def test_meld_keeps_same_file_names_of_different_splits_apart(tmp_path):
    rng = np.random.default_rng(1)
    split = {}
    for name in ("train", "dev", "test"):
        source = tmp_path / "meld" / name / "dia0_utt0.wav"
        source.parent.mkdir(parents=True)
        sf.write(source, rng.uniform(-0.5, 0.5, (4800, 2)), 48000)
        split[name] = [["dia0_utt0", "meld_0", "F", str(source), "joy"]]
    write_json(tmp_path / "meld.json", split)
    plan = preprocessing.plan_outputs("meld", [tmp_path / "meld.json"])
    assert sorted(plan) == ["dev_dia0_utt0.wav", "test_dia0_utt0.wav", "train_dia0_utt0.wav"]
    assert preprocessing.preprocess(plan, tmp_path / "out") == preprocessing.Preprocessed(written=3)
    outputs = [sf.read(tmp_path / "out" / name)[0] for name in sorted(plan)]
    assert all(len(o) == 1600 for o in outputs)
    assert not np.allclose(outputs[0], outputs[1])


def test_clips_too_short_for_the_backbones_are_written_and_named(tmp_path):
    for name, samples in (("window", 1200), ("short", 1197)):      # 400 and 399 samples at 16 kHz
        sf.write(tmp_path / f"{name}.wav", np.full(samples, 0.1), 48000)
    plan = {f"{name}.wav": str(tmp_path / f"{name}.wav") for name in ("window", "short")}
    short = [str(tmp_path / "short.wav")]
    assert preprocessing.preprocess(plan, tmp_path / "out") == preprocessing.Preprocessed(written=2, short=short)


def test_two_sources_for_one_output_name_is_an_error(tmp_path):
    entries = [["a", "s1", "F", "/corpus/Session1/x.wav", "neu"], ["b", "s2", "M", "/corpus/Session2/x.wav", "ang"]]
    write_json(tmp_path / "iemocap_fold1.json", {"train": entries, "dev": [], "test": []})
    with pytest.raises(TrustSerError, match="Session1/x.wav and /corpus/Session2/x.wav would both be preprocessed to x.wav"):
        preprocessing.plan_outputs("iemocap", [tmp_path / "iemocap_fold1.json"])


def test_same_source_in_several_folds_is_written_once(tmp_path):
    entry = ["a", "s1", "F", "/corpus/a.wav", "neu"]
    write_json(tmp_path / "f1.json", {"train": [entry], "dev": [], "test": []})
    write_json(tmp_path / "f2.json", {"train": [], "dev": [], "test": [entry]})
    assert preprocessing.plan_outputs("iemocap", [tmp_path / "f1.json", tmp_path / "f2.json"]) == {"a.wav": "/corpus/a.wav"}


def test_unfinished_output_is_redone(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF")
    sf.write(tmp_path / "y.wav", np.zeros(100), 22050)
    sf.write(tmp_path / "z.wav", np.zeros(100), 16000)
    assert [preprocessing.is_done(tmp_path / n) for n in ("x.wav", "y.wav", "z.wav", "w.wav")] == [False, False, True, False]


def test_a_source_changed_since_is_preprocessed_again_and_one_only_touched_is_kept(tmp_path):
    rng = np.random.default_rng(1)
    sources = {name: tmp_path / f"{name}.wav" for name in ("edited", "touched", "same")}
    for path in sources.values():
        sf.write(path, rng.uniform(-0.3, 0.3, 22050), 22050)
    plan, out = {f"{name}.wav": str(path) for name, path in sources.items()}, tmp_path / "out"
    assert preprocessing.preprocess(plan, out) == preprocessing.Preprocessed(written=3)
    written = {name: (out / f"{name}.wav").stat().st_mtime_ns for name in sources}
    sf.write(sources["edited"], rng.uniform(-0.3, 0.3, 11025), 22050)       # trimmed and re-recorded
    for name in ("edited", "touched"):                                       # e.g. a copy without -p
        os.utime(sources[name], ns=(written[name] + 10**9, written[name] + 10**9))
    assert preprocessing.preprocess(plan, out) == preprocessing.Preprocessed(written=1, skipped=2, again=[str(sources["edited"])])
    assert sf.info(str(out / "edited.wav")).frames == 8000
    assert [(out / f"{name}.wav").stat().st_mtime_ns == written[name] for name in sources] == [False, True, True]
