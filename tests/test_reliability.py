"""Reliability: atomic writes, resume after a kill, skip / overwrite / parallel folds / aggregate-only,
one-line errors for bad input, CPU determinism, and the scale-out scripts.

The script-level tests run the real scripts as subprocesses on a tiny synthetic project (5 speakers).
"""
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic_project import ENV, REPO, load_script, make_project, run_script
from model.heads import CNNSelfAttention
from utils.core.io import write_wav
from utils.runs.cli import base_parser, parse_folds
from utils.core.config import corpus_dir, load_config
from utils.data.utterances import load_fold
from utils.data.corpora import get_corpus, preprocessed_name
from utils.core.errors import TrustSerError, run_main
from utils.features.source import AudioBank
from utils.core.io import save_torch, write_json
from utils.data.layout import audio_dir, split_path
from utils.runs.paths import RunFolder, fairness_dir, finetune_dir
from utils.runs.identity import RunConfig
from utils.runs.stages import STAGE
from utils.training.pipeline import Stage, aggregate, load_state

FINETUNE = "experiment/finetune_single_thread.py"
FLAGS = ["--dataset", "demo", "--pretrain_model", "whisper_tiny", "--random_init", "--tiny", "--num_epochs", "4",
         "--batch_size", "8", "--device", "cpu"]


# ---------------------------------------------------------------- a tiny project, cloned per test

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Corpus, splits and preprocessed audio, built once by the real scripts."""
    root = tmp_path_factory.mktemp("reliability")
    make_project(root / "base", n_speakers=5, utts_per_emotion=2)
    return root


def clone(root: Path, name: str) -> Path:
    """A fresh project with the same splits and audio (no cache, no results); returns its config."""
    src, dst = root / "base" / "project", root / name / "project"
    for sub in ("train_split", "audio"):
        shutil.copytree(src / sub, dst / sub)
    config = root / name / "config.yml"
    config.write_text(f"data_dir:\n  demo: {root / 'base' / 'corpus'}\nproject_dir: {dst}\n")
    return config


def run_dir_of(config: Path, *extra: str) -> Path:
    args = base_parser("").parse_args([*FLAGS, *extra])
    return finetune_dir(config.parent / "project", args)


def finetune(config: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_script(FINETUNE, *FLAGS, "--config", str(config), *extra, check=check)


def start_finetune(config: Path, *extra: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(REPO / FINETUNE), *FLAGS, "--config", str(config), *extra],
                                env=ENV, stdout=out, stderr=subprocess.STDOUT)


def outputs(run_dir: Path, fold: int) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes()
            for name in (f"fold_{fold}.json", f"fold_{fold}_test_predictions.csv")}


def assert_same_head(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The error line of a failed script: exit status 2, nothing else on stderr."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and " INFO " not in line
             and " WARNING " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(base) -> Path:
    """Folds 1 and 2, trained in one process without interruption: what every other run must reproduce."""
    config = clone(base, "reference")
    finetune(config, "--folds", "1,2")
    return run_dir_of(config)


# ---------------------------------------------------------------- determinism and resume

@pytest.mark.slow
def test_same_flags_and_seed_on_cpu_give_identical_files(base, reference):
    config = clone(base, "again")
    finetune(config, "--folds", "1,2")
    run_dir = run_dir_of(config)
    for fold in (1, 2):
        assert outputs(run_dir, fold) == outputs(reference, fold)
        assert_same_head(run_dir / f"fold_{fold}.pt", reference / f"fold_{fold}.pt")
    assert (run_dir / "results.json").read_bytes() == (reference / "results.json").read_bytes()
    best = json.loads((run_dir / "fold_1.json").read_text())["best"]
    assert best["num_test"] == 8 and 0.0 <= best["uar"] <= 100.0


@pytest.mark.slow
def test_fold_killed_mid_training_resumes_to_the_identical_result(base, reference, tmp_path):
    config = clone(base, "killed")
    run_dir = run_dir_of(config)
    last = run_dir / "fold_1_last.pt"
    proc = start_finetune(config, "--folds", "1", log=tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert last.is_file() and not RunFolder(run_dir, trains=True).fold_finished(1)
    epochs_done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= epochs_done < 4 and not (run_dir / "fold_1_test_predictions.csv").exists()
    heads = {p.name for p in run_dir.glob("fold_1_epoch_*_head.pt")}        # kept to score the test split at the end
    assert heads >= {f"fold_1_epoch_{e}_head.pt" for e in range(epochs_done)}

    rerun = finetune(config, "--folds", "1")
    logged = re.findall(r"fold 1(?: epoch (\d+):|: resuming after epoch (\d+))", rerun.stderr)
    assert logged == [("", str(epochs_done - 1)), *((str(e), "") for e in range(epochs_done, 4))]   # later ones only
    assert outputs(run_dir, 1) == outputs(reference, 1)
    assert_same_head(run_dir / "fold_1.pt", reference / "fold_1.pt")
    results, expected = (json.loads((d / "results.json").read_text()) for d in (run_dir, reference))
    assert results["1"] == expected["1"] and results["meta"]["folds_done"] == [1]
    assert not last.exists()
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.slow
def test_parallel_folds_then_skip_aggregate_only_and_overwrite(base, reference, tmp_path):
    config = clone(base, "parallel")
    run_dir = run_dir_of(config)
    procs = [start_finetune(config, "--folds", str(f), log=tmp_path / f"fold{f}.log") for f in (1, 2)]
    for f, proc in zip((1, 2), procs):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"fold{f}.log").read_text()[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["meta"]["folds_done"] == [1, 2] and results["meta"]["folds_missing"] == [3, 4, 5]
    assert results["average"]["uar"] == pytest.approx((results["1"]["uar"] + results["2"]["uar"]) / 2, rel=1e-5)
    # one process per fold, at the same time, gives exactly what one process for both folds gave
    assert (run_dir / "results.json").read_bytes() == (reference / "results.json").read_bytes()
    assert outputs(run_dir, 1) == outputs(reference, 1) and outputs(run_dir, 2) == outputs(reference, 2)

    # rerun: both folds skipped, their files untouched, no model built
    mtimes = {p.name: p.stat().st_mtime_ns for p in run_dir.glob("fold_*")}
    rerun = finetune(config, "--folds", "1,2")
    assert f"folds 1, 2: already finished in {run_dir}, skipping" in rerun.stderr
    assert "feature cache" not in rerun.stderr and "epoch" not in rerun.stderr
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.glob("fold_*")} == mtimes

    # --aggregate_only rebuilds results.json without training
    before = (run_dir / "results.json").read_bytes()
    (run_dir / "results.json").unlink()
    finetune(config, "--aggregate_only")
    assert (run_dir / "results.json").read_bytes() == before

    # a damaged epoch checkpoint: one line naming it and the way out
    (run_dir / "fold_3_last.pt").write_bytes(b"PK\x03\x04 cut off")
    line = one_line_error(finetune(config, "--folds", "3", check=False))
    assert "cannot resume from" in line and "fold_3_last.pt" in line and "--overwrite" in line
    assert not (run_dir / "fold_3.json").exists()

    # --overwrite redoes the fold (to the same result)
    old = outputs(run_dir, 2)
    redo = finetune(config, "--folds", "2", "--overwrite")
    assert "already finished" not in redo.stderr and "fold 2 epoch 2" in redo.stderr
    assert (run_dir / "fold_2.json").stat().st_mtime_ns > mtimes["fold_2.json"]
    assert outputs(run_dir, 2) == old


@pytest.mark.slow
def test_trust_evaluation_skips_finished_folds_and_aggregates_only(base, reference):
    config = base / "reference" / "config.yml"
    fairness = ["trustworthy/fairness/fairness_evaluation.py", *FLAGS, "--config", str(config), "--bootstrap", "5"]
    out_dir = fairness_dir(config.parent / "project", base_parser("").parse_args(FLAGS))
    run_script(*fairness, "--folds", "1")
    first = (out_dir / "fold_1.json").read_bytes()
    mtime = (out_dir / "fold_1.json").stat().st_mtime_ns
    assert json.loads(first)["num_test"] == 8 and json.loads(first)["skipped_bad_audio"] == 0
    (out_dir / "results.json").unlink()
    again = run_script(*fairness, "--folds", "1")
    assert "fold 1: already evaluated" in again.stderr
    assert (out_dir / "fold_1.json").stat().st_mtime_ns == mtime
    results = json.loads((out_dir / "results.json").read_text())      # rebuilt from the fold file
    assert results["meta"]["folds_done"] == [1]
    (out_dir / "results.json").unlink()
    run_script(*fairness, "--aggregate_only")
    assert json.loads((out_dir / "results.json").read_text()) == results


# ---------------------------------------------------------------- bad audio, end to end

@pytest.mark.slow
def test_bad_audio_is_one_line_or_skipped_and_counted(base):
    config = clone(base, "bad_audio")
    project = config.parent / "project"
    test_entries = json.loads(split_path(project, "demo", 1).read_text())["test"]
    bad = [audio_dir(project, "demo") / preprocessed_name("demo", e, "test") for e in test_entries[:4]]
    bad[0].unlink()                                        # listed but missing
    bad[1].write_bytes(b"")                                # zero-length
    bad[2].write_bytes(bad[2].read_bytes()[:30])           # truncated inside the header
    write_wav(bad[3], np.full(16000, np.nan, np.float32), 16000)  # all NaN
    run_dir = run_dir_of(config, "--num_epochs", "1")

    line = one_line_error(finetune(config, "--folds", "1", "--num_epochs", "1", check=False))
    assert str(bad[0]) in line and "not found" in line and "--skip_bad" in line
    assert not list(run_dir.glob("fold_1*")) and not (run_dir / "results.json").exists()

    proc = finetune(config, "--folds", "1", "--num_epochs", "1", "--skip_bad")
    for path in bad:
        assert f"skipping: {path}" in proc.stderr
    best = json.loads((run_dir / "fold_1.json").read_text())["best"]
    assert best["skipped_bad_audio"] == 4 and best["num_test"] == 4
    assert len((run_dir / "fold_1_test_predictions.csv").read_text().splitlines()) == 1 + 4


# ---------------------------------------------------------------- one-line errors from the command line

@pytest.mark.slow
@pytest.mark.parametrize("flag, value, expected", [
    ("--dataset", "iemocapp", ["unknown --dataset 'iemocapp'", "iemocap", "crema_d", "demo"]),
    ("--pretrain_model", "whisper_huge", ["unknown --pretrain_model 'whisper_huge'", "apc", "tera", "wavlm",
                                          "wav2vec2_0", "whisper_small"]),
    ("--config", "/nonexistent/config.yml", ["config file /nonexistent/config.yml not found"]),
    ("--batch_size", "0", ["argument --batch_size: must be at least 1, got 0", "--help lists the flags"]),
    ("--learning_rate", "-1", ["argument --learning_rate: must be above 0, got -1"]),
    ("--pooling", "max", ["argument --pooling: invalid choice: 'max'"]),
])
def test_cli_mistakes_give_one_line_and_exit_2(base, flag, value, expected):
    config = base / "base" / "config.yml"
    proc = run_script(FINETUNE, *FLAGS, "--config", str(config), flag, value, check=False)
    line = one_line_error(proc)
    assert proc.stderr == line + "\n" and proc.stdout == ""            # that line and nothing else
    for text in expected:
        assert text in line
    assert not (base / "base" / "project" / "finetune").exists()


@pytest.mark.parametrize("script, flag, value, says", [
    ("trustworthy/safety/adversarial_attack.py", "--pgd_steps", "0", "must be at least 1, got 0"),
    ("trustworthy/fairness/fairness_evaluation.py", "--bootstrap", "-5", "must be at least 0, got -5"),
    ("trustworthy/sustainability/sustainability.py", "--input_seconds", "0.01", "must be 0.025 or more, got 0.01"),
    ("trustworthy/sustainability/sustainability.py", "--repeats", "ten", "expected a whole number, got 'ten'"),
    ("experiment/finetune_single_thread.py", "--num_epochs", "0", "must be at least 1, got 0"),
    ("experiment/finetune_single_thread.py", "--cache_gb", "nan", "must be 0 or more, got nan"),
    ("experiment/predict.py", "--output", "/", "/ is a folder; give a file path, e.g. /predictions.csv"),
    ("experiment/predict.py", "--device", "gpu", "'gpu' is not a torch device (cpu, cuda, cuda:1, mps, ...)"),
])
def test_a_stage_flag_out_of_range_is_refused_before_any_work(script, flag, value, says):
    with pytest.raises(TrustSerError) as err:
        load_script(script).main(["--dataset", "demo", flag, value])
    assert str(err.value).startswith(f"argument {flag}: {says} (")


@pytest.mark.slow
def test_no_hub_access_explains_the_three_choices(base):
    config = base / "base" / "config.yml"
    flags = [f for f in FLAGS if f not in ("--random_init", "--tiny")]
    proc = run_script(FINETUNE, *flags, "--config", str(config), "--folds", "1", check=False)
    line = one_line_error(proc)         # after the split files' INFO lines: they are read before any download
    assert "whisper_tiny" in line and "network access" in line
    assert "--pretrain_path" in line and "--random_init" in line
    assert not (base / "base" / "project" / "finetune").exists()       # nothing written


def test_s3prl_backbones_without_hub_fail_at_once(monkeypatch):
    from model.backbones import build_backbone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(TrustSerError) as info:
        build_backbone("apc")
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert "\n" not in message and "--pretrain_path" in message and "--random_init" in message


# ---------------------------------------------------------------- one-line errors, in-process

def test_a_device_this_machine_lacks_is_named(monkeypatch):
    import torch
    from utils.training.pipeline import resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrustSerError, match="--device cuda requested but CUDA is not available; use --device cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(TrustSerError, match=r"--device cuda:3: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:3")


def test_config_file_or_key_missing(tmp_path):
    with pytest.raises(TrustSerError, match="not found; pass --config"):
        load_config(tmp_path / "none.yml")
    (tmp_path / "no_project.yml").write_text("data_dir:\n  demo: corpus\n")
    with pytest.raises(TrustSerError, match="no_project.yml has no 'project_dir' key"):
        load_config(tmp_path / "no_project.yml")
    (tmp_path / "config.yml").write_text("data_dir:\n  demo: corpus\nproject_dir: out\n")
    config = load_config(tmp_path / "config.yml")
    with pytest.raises(TrustSerError, match="has no data_dir.iemocap key"):
        corpus_dir(config, "iemocap")
    with pytest.raises(TrustSerError, match=f"corpus folder for demo not found: {tmp_path / 'corpus'}"):
        corpus_dir(config, "demo")


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "c.yml"
    bad.write_text("data_dir:\n  demo: corpus\n project_dir: out\n")       # one space short of the mapping's indent
    with pytest.raises(TrustSerError) as info:
        load_config(bad)
    assert str(info.value) == (f"{bad}:3:2: config file is not valid YAML: "
                               f"expected <block end>, but found '<block mapping start>'")
    bad.write_text("project_dir: out\ndata_dir: {demo: corpus\n")
    with pytest.raises(TrustSerError, match=rf"^{bad}:3:1: config file is not valid YAML: expected ',' or '}}'"):
        load_config(bad)


def test_corpus_laid_out_differently_names_what_was_looked_for(tmp_path):
    demo = load_script("train_split_gen/demo.py")
    (tmp_path / "some_other_corpus").mkdir()
    with pytest.raises(TrustSerError, match="speakers.csv not found"):
        demo.read_speakers(tmp_path / "some_other_corpus")
    (tmp_path / "spk01_F").mkdir()
    with pytest.raises(TrustSerError, match=r"no spk01_\*\.wav files in .*spk01_F"):
        demo.speaker_entries(tmp_path, "spk01", "F")


def _bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the error must contain)."""
    good = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    write_wav(folder / "good.wav", good, 16000)
    cases = {"missing": (folder / "missing.wav", "not found"),
             "unreadable": (folder / "junk.wav", "not a readable audio file"),
             "truncated_header": (folder / "cut.wav", "not a readable audio file"),
             "zero_bytes": (folder / "zero.wav", "not a readable audio file"),
             "no_samples": (folder / "empty.wav", "no samples"),
             "all_nan": (folder / "nan.wav", "NaN"),
             "not_preprocessed": (folder / "sr8k.wav", "preprocess_audio/preprocess_audio.py"),
             "too_short": (folder / "short.wav", "399 samples, shorter than 25 ms")}
    (folder / "junk.wav").write_bytes(b"not audio at all " * 64)
    (folder / "cut.wav").write_bytes((folder / "good.wav").read_bytes()[:30])
    (folder / "zero.wav").write_bytes(b"")
    write_wav(folder / "empty.wav", np.zeros(0, np.float32), 16000)
    write_wav(folder / "nan.wav", np.full(16000, np.nan, np.float32), 16000)
    write_wav(folder / "sr8k.wav", good[:8000], 8000)
    write_wav(folder / "short.wav", good[:399], 16000)       # the backbones' front ends take 400 samples or more
    return cases


@pytest.mark.parametrize("case", ["missing", "unreadable", "truncated_header", "zero_bytes", "no_samples",
                                  "all_nan", "not_preprocessed", "too_short"])
def test_each_bad_audio_file_is_named_in_one_line_or_skipped(tmp_path, case):
    path, words = _bad_files(tmp_path)[case]
    with pytest.raises(TrustSerError) as info:
        AudioBank(6, skip_bad=False).get(str(path))
    message = str(info.value)
    assert str(path) in message and words in message and "\n" not in message
    assert "--skip_bad" in message
    bank = AudioBank(6, skip_bad=True)
    assert bank.get(str(path)) is None and bank.get(str(tmp_path / "good.wav")) is not None
    assert list(bank.bad) == [str(path)]


def test_the_shortest_clip_the_backbones_take_is_read(tmp_path):
    write_wav(tmp_path / "window.wav", np.full(400, 0.1, np.float32), 16000)
    assert len(AudioBank(6, skip_bad=False).get(str(tmp_path / "window.wav"))) == 400


def test_audio_cut_off_inside_its_data_is_reported(tmp_path):
    write_wav(tmp_path / "good.wav", np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
    data = (tmp_path / "good.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrustSerError, match="cut.wav: audio file is truncated"):
        AudioBank(6, skip_bad=False).get(str(tmp_path / "cut.wav"))


def _write_split(project: Path, train: list, dev: list, test: list) -> None:
    """A split file, and a preprocessed audio folder that is not empty."""
    entry = lambda i, label: [f"u{i}", "spk", "F", f"/corpus/u{i}.wav", label]    # noqa: E731
    audio_dir(project, "demo").mkdir(parents=True)
    (audio_dir(project, "demo") / "u0.wav").touch()
    write_json(split_path(project, "demo", 1), {"train": [entry(i, lab) for i, lab in enumerate(train)],
                                                "dev": [entry(100 + i, lab) for i, lab in enumerate(dev)],
                                                "test": [entry(200 + i, lab) for i, lab in enumerate(test)]})


def test_labels_outside_the_emotions_are_dropped_and_counted(tmp_path, caplog):
    _write_split(tmp_path, ["neu", "fea", "sad", "fea", "dis"], ["ang"], ["hap", "xxx"])
    with caplog.at_level(logging.INFO, logger="trust-ser"):
        fold = load_fold(tmp_path, "demo", 1)
    assert [len(fold[s]) for s in ("train", "dev", "test")] == [2, 1, 1]
    assert [u.label for u in fold["train"]] == [0, 1]
    lines = [r.getMessage() for r in caplog.records if "demo_fold1.json" in r.getMessage()]
    assert lines == ["demo_fold1.json: train 2, dev 1, test 1 utterances; "
                     "dropped 4 with other labels ({'fea': 2, 'dis': 1, 'xxx': 1})"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trust-ser"):
        load_fold(tmp_path, "demo", 1)
    assert not [r for r in caplog.records if "demo_fold1.json" in r.getMessage()]     # once per process


def test_a_stage_before_preprocessing_names_the_preprocessing_command(tmp_path):
    _write_split(tmp_path, ["neu"], ["ang"], ["hap"])
    (audio_dir(tmp_path, "demo") / "u0.wav").unlink()
    with pytest.raises(TrustSerError, match="no preprocessed audio in .*; run first: "
                                            "python3 preprocess_audio/preprocess_audio.py --dataset demo"):
        load_fold(tmp_path, "demo", 1)


@pytest.mark.parametrize("empty", ["train", "dev", "test"])
def test_a_fold_with_an_empty_split_is_one_line(tmp_path, empty):
    splits = {"train": ["neu", "sad"], "dev": ["ang"], "test": ["hap"]}
    splits[empty] = ["fea"]       # only labels that are dropped
    _write_split(tmp_path, splits["train"], splits["dev"], splits["test"])
    with pytest.raises(TrustSerError, match=f"demo_fold1.json: fold 1 has an empty {empty} split"):
        load_fold(tmp_path, "demo", 1)


def _head(input_dim: int, layers: int, hidden: int) -> CNNSelfAttention:
    return CNNSelfAttention(input_dim=input_dim, num_enc_layers=layers, output_class_num=4, hidden_dim=hidden,
                            conv_layers=2, pooling_method="mean")


def test_checkpoint_of_another_backbone_or_head_shape_is_refused(tmp_path):
    save_torch(tmp_path / "head.pt", _head(32, 3, 64).state_dict())
    load_state(_head(32, 3, 64), tmp_path / "head.pt")                   # fits
    for other in (_head(48, 3, 64), _head(32, 5, 64), _head(32, 3, 128)):  # other backbone width/depth, head size
        with pytest.raises(TrustSerError, match=r"head\.pt does not fit this backbone/head \(other --pretrain_model"):
            load_state(other, tmp_path / "head.pt")
    save_torch(tmp_path / "other_backbone.pt", {"encoder.layers.0.weight": torch.zeros(2)})
    with pytest.raises(TrustSerError, match="1 unknown weights, e.g. encoder.layers.0.weight"):
        load_state(_head(32, 3, 64), tmp_path / "other_backbone.pt", strict=False)
    (tmp_path / "damaged.pt").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(TrustSerError, match="damaged.pt is not a readable checkpoint"):
        load_state(_head(32, 3, 64), tmp_path / "damaged.pt")


def _exit_line(capsys, main) -> str:
    with pytest.raises(SystemExit) as info:
        run_main(main)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_out_of_memory_suggests_the_batch_size_flags(capsys):
    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    err = _exit_line(capsys, oom)
    assert "out of memory" in err and "--batch_size" in err and "--eval_batch_size" in err and "resume" in err


def test_disk_full_and_multi_line_messages_stay_one_line(capsys, tmp_path):
    def disk_full():
        raise OSError(28, "No space left on device", "/project/cache/ab/x.pt")
    assert "no space left on the device writing /project/cache/ab/x.pt" in _exit_line(capsys, disk_full)

    def read_only():
        raise PermissionError(13, "Permission denied", "/shared/project/finetune")
    assert _exit_line(capsys, read_only).startswith("error: /shared/project/finetune: Permission denied (check its")

    def folder_as_file():
        write_json(tmp_path, {})
    assert _exit_line(capsys, folder_as_file) == f"error: cannot write {tmp_path}: it is a folder\n"

    def two_lines():
        raise TrustSerError("first\nsecond")
    assert _exit_line(capsys, two_lines) == "error: first second\n"


def test_a_bug_keeps_its_traceback():
    def bug():
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        run_main(bug)


# ---------------------------------------------------------------- atomic writes

class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("fails half-way through serialisation")


def test_failed_writes_leave_the_old_file_and_no_temporary_file(tmp_path):
    write_json(tmp_path / "fold_1.json", {"uar": 50.0})
    with pytest.raises(TypeError):
        write_json(tmp_path / "fold_1.json", {"uar": 60.0, "bad": object()})
    assert json.loads((tmp_path / "fold_1.json").read_text()) == {"uar": 50.0}

    save_torch(tmp_path / "fold_1.pt", {"w": torch.ones(3)})
    with pytest.raises(RuntimeError, match="half-way"):
        save_torch(tmp_path / "fold_1.pt", {"w": torch.zeros(3), "x": Unpicklable()})
    assert torch.equal(torch.load(tmp_path / "fold_1.pt", weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_1.json", "fold_1.pt"]


def test_no_unsafe_torch_load_anywhere():
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "tests" not in p.parts]
    assert len(sources) > 20
    unsafe = [str(p) for p in sources if "weights_only=" + "False" in p.read_text()]
    loads = [str(p.relative_to(REPO)) for p in sources if "torch." + "load(" in p.read_text()]
    assert unsafe == [] and loads == ["utils/core/io.py"]


# ---------------------------------------------------------------- scale-out scripts

def _bash(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The script run from another folder; the tasks' exit statuses go to a fresh folder unless TASK_STATUS_DIR."""
    env.setdefault("TASK_STATUS_DIR", tempfile.mkdtemp(prefix="task_status_"))
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], env={**ENV, **env}, cwd="/",
                          capture_output=True, text=True, timeout=60)


def _fake_python(path: Path, body: str) -> Path:
    """A stand-in for the stage scripts: `body` is a sh case over "$1 $*" (the script path, then every flag)."""
    path.write_text(f'#!/bin/sh\ncase "$1 $*" in\n{body}\nesac\nexit 0\n')
    path.chmod(0o755)
    return path


def test_scale_out_scripts_parse_and_map_tasks(tmp_path):
    for script in ("slurm_array.sh", "run_local.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "scripts" / script)]).returncode == 0
    text = (REPO / "scripts" / "slurm_array.sh").read_text()
    assert "#SBATCH --array=0-34" in text and "#SBATCH --gres=gpu:1" in text     # 7 backbones x 5 folds
    assert _bash("slurm_array.sh", "--num_tasks").stdout.strip() == "35"

    proc = _bash("slurm_array.sh", "--dataset", "demo", "--hidden_size", "64", SLURM_ARRAY_TASK_ID="4",
                 BACKBONES="apc tera", FOLDS="1 2 3", DRY_RUN="1")
    commands = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert proc.returncode == 0 and "task 4 of 6: corpus demo, backbone tera, fold 2" in proc.stdout
    assert all("--dataset demo --pretrain_model tera --folds 2 --dataset demo --hidden_size 64" in c for c in commands)
    assert [c.split()[2].split("/")[-1] for c in commands] == [
        "finetune_single_thread.py", "fairness_evaluation.py", "adversarial_attack.py", "robustness.py"]  # no privacy/FLOPs
    proc = _bash("slurm_array.sh", "--dataset", "demo", SLURM_ARRAY_TASK_ID="0", BACKBONES="apc", FOLDS="1",
                 DRY_RUN="1", PERTURBATIONS="white_10db,telephone")
    assert "robustness.py --dataset demo --pretrain_model apc --folds 1 --dataset demo --perturbations " \
           "white_10db,telephone" in proc.stdout

    proc = _bash("slurm_array.sh", SLURM_ARRAY_TASK_ID="6", BACKBONES="apc tera", FOLDS="1 2 3")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--array=0-5" in proc.stderr
    assert "#SBATCH --open-mode=append" in text and "#SBATCH --output=logs/" in text
    assert (REPO / "logs" / ".gitignore").is_file()


def test_skipped_folds_are_one_line_and_a_damaged_fold_says_why_it_is_done_again(tmp_path, caplog):
    from utils.runs.paths import RunFolder
    from utils.training.finetune import folds_to_train
    folder = RunFolder(tmp_path, trains=True)
    for fold in (1, 2, 4):
        folder.fold_json(fold).write_text(json.dumps({"best": {"uar": 50.0, "best_epoch": 0}}))
        folder.head(fold).write_bytes(b"head")
        folder.predictions(fold).write_text("key\n")
    folder.fold_json(3).write_text("{cut sh")
    folder.predictions(4).unlink()
    with caplog.at_level("INFO", logger="trust-ser"):
        assert folds_to_train(folder, [1, 2, 3, 4, 5], overwrite=False) == [3, 4, 5]
    assert [r.getMessage() for r in caplog.records] == [
        f"folds 1, 2: already finished in {tmp_path}, skipping (--overwrite to redo)",
        f"{folder.fold_json(3)} is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
        f"(char 1)): fold 3 is done again",
        f"{folder.fold_json(4)} holds the fold's result, but fold_4_test_predictions.csv is not there: fold 4 is "
        f"done again"]


def test_folds_flag_gives_each_fold_once_in_order():
    assert parse_folds("2,1,2", [1, 2, 3]) == [1, 2] and parse_folds(" 3 ", [1, 2, 3]) == [3]
    assert parse_folds(None, [1, 2, 3]) == [1, 2, 3]
    with pytest.raises(TrustSerError, match="--folds ',' names no fold; this corpus has folds"):
        parse_folds(",", [1, 2, 3])
    with pytest.raises(TrustSerError, match=r"fold\(s\) \[4\] do not exist"):
        parse_folds("1,4", [1, 2, 3])


@pytest.mark.slow
def test_corpora_list_spans_corpus_backbone_and_each_corpus_folds():
    """CORPORA: tasks corpus by corpus, backbone by backbone, over each corpus' own folds (utils/data/corpora.py)."""
    env = dict(CORPORA="demo msp-podcast", BACKBONES="apc tera")
    assert _bash("slurm_array.sh", "--num_tasks", **env).stdout.strip() == "12"     # (5 + 1) folds x 2
    assert _bash("slurm_array.sh", "--last_task", **env).stdout.strip() == "11"
    proc = _bash("slurm_array.sh", "--hidden_size", "64", SLURM_ARRAY_TASK_ID="11", DRY_RUN="1", **env)
    commands = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert "task 11 of 12: corpus msp-podcast, backbone tera, fold 1" in proc.stdout
    assert all("--dataset msp-podcast --pretrain_model tera --folds 1 --hidden_size 64" in c for c in commands)
    assert commands[-1].split()[2].endswith("sustainability.py")     # the first (only) fold of this corpus
    proc = _bash("slurm_array.sh", "--dataset", "demo", "--num_tasks", **env)
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_aggregating_skips_runs_that_were_never_trained(tmp_path):
    fake = tmp_path / "python"     # finetune says what it says for an untrained backbone, the rest succeed
    fake.write_text('#!/bin/sh\ncase "$1" in -c) exec python3 "$@";; *finetune_single_thread.py) case "$*" in '
                    '*tera*) echo "error: no finished folds in /x; nothing to aggregate" >&2; exit 2;; esac;; esac\n'
                    'exit 0\n')
    fake.chmod(0o755)
    proc = _bash("slurm_array.sh", "--aggregate_only", "--dataset", "demo", BACKBONES="apc tera", FOLDS="1 2",
                 PYTHON=str(fake))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipping tera on demo: no finished folds and no task of it ran (never submitted)" in proc.stdout
    ran = [line.split()[2].split("/")[-1] + " " + line.split()[6] for line in proc.stdout.splitlines()
           if line.startswith("+ ")]
    assert "fairness_evaluation.py apc" in ran and "fairness_evaluation.py tera" not in ran


def test_a_failing_stage_fails_the_task_but_not_the_other_stages(tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\ncase "$1" in *gender_inference.py) exit 2;; esac\nexit 0\n')
    fake.chmod(0o755)
    proc = _bash("slurm_array.sh", SLURM_ARRAY_TASK_ID="0", BACKBONES="apc", FOLDS="1 2", PYTHON=str(fake))
    ran = [Path(line.split()[2]).name for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert proc.returncode == 2 and ran[-2:] == ["gender_inference.py", "sustainability.py"]
    broken = _fake_python(tmp_path / "broken", "    *finetune_single_thread.py*) exit 1;;")
    proc = _bash("slurm_array.sh", SLURM_ARRAY_TASK_ID="0", BACKBONES="apc", FOLDS="1 2", PYTHON=str(broken))
    ran = [Path(line.split()[2]).name for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert proc.returncode == 2 and ran == ["finetune_single_thread.py"]       # nothing to evaluate


def test_aggregation_names_the_failed_tasks_once_and_exits_2(tmp_path):
    """Task 1 is killed mid-finetune (no exit status), task 2 fails, task 3 is never submitted."""
    fake = _fake_python(tmp_path / "python", """
    *finetune_single_thread.py*tera*--aggregate_only*) echo "error: no finished folds in /x; nothing to aggregate" >&2
        exit 2;;
    *finetune_single_thread.py*apc*--folds?2*) kill -9 $PPID;;
    *finetune_single_thread.py*tera*) echo "error: fold 1 is broken" >&2; exit 2;;""")
    env = dict(BACKBONES="apc tera", FOLDS="1 2", PYTHON=str(fake), TASK_STATUS_DIR=str(tmp_path / "status"),
               SLURM_ARRAY_JOB_ID="77")
    codes = [_bash("slurm_array.sh", "--dataset", "demo", SLURM_ARRAY_TASK_ID=str(t), **env).returncode
             for t in range(3)]
    assert codes == [0, -9, 2]
    proc = _bash("slurm_array.sh", "--aggregate_only", "--dataset", "demo", **env)
    assert proc.returncode == 2 and "skipping" not in proc.stdout
    assert proc.stderr == (
        "error: 2 of 4 tasks failed: 1 (demo apc fold 2: started, no exit status (killed, timed out, preempted or "
        "still running), log logs/trust-ser_77_1.out); 2 (demo tera fold 1: exit 2, log logs/trust-ser_77_2.out); "
        "fix the cause, rerun them (sbatch --array=1,2 scripts/slurm_array.sh ARGS, or the same run_local.sh "
        "command), then aggregate again\n")
    other_flags = _bash("slurm_array.sh", "--aggregate_only", "--dataset", "demo", "--hidden_size", "64", **env)
    assert other_flags.returncode == 0 and other_flags.stderr == ""       # another run: its tasks never ran


def test_no_finished_folds_says_whether_the_run_started(tmp_path):
    corpus = get_corpus("iemocap")
    stage = Stage(Namespace(aggregate_only=True), RunConfig(), {"project_dir": str(tmp_path)}, corpus, [1], [1, 2, 3])
    folder = STAGE["uar"].folder(tmp_path, stage.run)
    messages = []
    for make in (lambda: None, lambda: write_json(folder.record, {}), lambda: save_torch(folder.last(2), {})):
        make()
        with pytest.raises(TrustSerError) as info:
            aggregate(stage, STAGE["uar"])
        messages.append(str(info.value).split("nothing to aggregate")[1])
    assert messages == ["", " (started but unfinished: run.json, no fold file)", " (started but unfinished: fold 2)"]


def test_a_run_started_without_task_records_fails_the_aggregation(tmp_path):
    fake = _fake_python(tmp_path / "python", """
    *finetune_single_thread.py*tera*) echo "error: no finished folds in /r; nothing to aggregate (started but \
unfinished: fold 2)" >&2; exit 2;;""")
    proc = _bash("slurm_array.sh", "--aggregate_only", "--dataset", "demo", BACKBONES="apc tera", FOLDS="1 2",
                 PYTHON=str(fake))
    assert proc.returncode == 2 and proc.stdout.count("started but unfinished: fold 2") == 1
    assert "skipping" not in proc.stdout


def test_a_bad_backbone_is_named_once_by_the_aggregation(tmp_path):
    fake = _fake_python(tmp_path / "python", """
    *nosuch*) echo "error: unknown --pretrain_model 'nosuch'" >&2; exit 2;;""")
    proc = _bash("slurm_array.sh", "--aggregate_only", "--dataset", "demo", BACKBONES="apc nosuch", FOLDS="1",
                 PYTHON=str(fake))
    assert proc.returncode == 2 and (proc.stdout + proc.stderr).count("unknown --pretrain_model") == 1
    assert "fairness_evaluation.py --dataset demo --pretrain_model apc" in proc.stdout


def test_an_unknown_corpus_fails_the_task_count_loudly():
    """--array=0-$(... --last_task) must not become --array=0-: nothing on stdout, one line on stderr."""
    for env in (dict(CORPORA="demo typo"), dict(CORPORA="typo", FOLDS="1 2")):
        proc = _bash("slurm_array.sh", "--last_task", BACKBONES="apc", PYTHON=sys.executable, **env)
        assert (proc.returncode, proc.stdout) == (2, "") and proc.stderr.count("\n") == 1
        assert "unknown --dataset 'typo'" in proc.stderr
    proc = _bash("slurm_array.sh", "--last_task", "--dataset", "demo", FOLDS=" ", PYTHON=sys.executable)
    assert (proc.returncode, proc.stdout) == (2, "") and "no tasks" in proc.stderr


def test_corpus_folds_in_process(capsys):
    corpus_folds = load_script("scripts/corpus_folds.py")
    corpus_folds.main(["--dataset", "msp-improv", "--hidden_size", "64"])
    corpus_folds.main(["--dataset", "meld", "--protocol", "original"])
    assert capsys.readouterr().out == "1 2 3 4 5 6\n1 2 3 4 5\n"
    with pytest.raises(TrustSerError, match="unknown --dataset 'typo'"):
        corpus_folds.main(["--dataset", "typo"])


def test_a_cpu_only_task_gets_the_threads_slurm_gave_it(tmp_path):
    fake = _fake_python(tmp_path / "python", """
    *) echo "$OMP_NUM_THREADS ${CUDA_VISIBLE_DEVICES-unset}" >> %s;;""" % (tmp_path / "seen"))
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_array.sh"), "--dataset", "demo"], cwd="/",
                          env={**env, "SLURM_ARRAY_TASK_ID": "0", "SLURM_CPUS_PER_TASK": "2", "BACKBONES": "apc",
                               "FOLDS": "1", "PYTHON": str(fake), "TASK_STATUS_DIR": str(tmp_path / "status")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert set((tmp_path / "seen").read_text().splitlines()) == {"2 "}       # every stage: 2 threads, no GPU


def test_run_local_runs_every_task_then_aggregates():
    proc = _bash("run_local.sh", "--dataset", "demo", "--random_init", BACKBONES="whisper_tiny", FOLDS="1 2",
                 ATTACKS="fgsm:45 pgd:30", DRY_RUN="1", JOBS="2")
    assert proc.returncode == 0, proc.stderr
    commands = [line.split()[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    scripts = [Path(c[0]).name for c in commands]
    per_fold = {f: [Path(c[0]).name for c in commands if "--folds" in c and c[c.index("--folds") + 1] == f]
                for f in ("1", "2")}
    assert sorted(per_fold["1"]) == sorted(["finetune_single_thread.py", "fairness_evaluation.py",
                                            "adversarial_attack.py", "adversarial_attack.py", "robustness.py",
                                            "gender_inference.py", "sustainability.py"])
    assert sorted(per_fold["2"]) == sorted(["finetune_single_thread.py", "fairness_evaluation.py",
                                            "adversarial_attack.py", "adversarial_attack.py", "robustness.py"])
    aggregate = [c for c in commands if "--aggregate_only" in c]
    assert commands[-len(aggregate):] == aggregate and len(aggregate) == 6    # after every task
    assert {Path(c[0]).name for c in aggregate} == set(scripts) - {"sustainability.py"}
    assert all(c[c.index("--pretrain_model") + 1] == "whisper_tiny" and "--random_init" in c for c in commands)


def test_every_script_describes_itself_in_a_whole_first_line():
    """argparse shows the docstring's first line as the description: a sentence cut there reads as a fragment."""
    import ast
    scripts = [path for top in ("experiment", "trustworthy", "train_split_gen", "preprocess_audio", "benchmarks",
                                "scripts") for path in sorted((REPO / top).rglob("*.py"))]
    cut = [f"{path.relative_to(REPO)}: {first}" for path in scripts
           if "__doc__" in (text := path.read_text())
           and not (first := ast.get_docstring(ast.parse(text)).splitlines()[0]).endswith(".")]
    assert len(scripts) > 20 and cut == []
