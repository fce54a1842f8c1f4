"""utils/core/io.py: atomic writes honour the umask, JSON floats are rounded, damaged checkpoints are explained;
utils/core/progress.py: plain lines in logs."""
import json
import logging
import math
import os
import runpy
import stat
import sys
from unittest import mock

import numpy as np
import pytest
import torch

from synthetic_project import REPO
from utils.core.errors import TrustSerError
from utils.core.io import load_torch, save_torch, write_bytes, write_json, write_text
from utils.core.progress import progress
from utils.data.synthetic import make_corpus


@pytest.fixture
def umask():
    previous = os.umask(0o077)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    writers = {"a.json": lambda p: write_json(p, {"x": 1}), "b.txt": lambda p: write_text(p, "hi"),
               "c.bin": lambda p: write_bytes(p, b"\0"), "d.pt": lambda p: save_torch(p, {"w": torch.ones(2)})}
    for name, write in writers.items():
        write(tmp_path / "sub" / name)
        assert stat.S_IMODE((tmp_path / "sub" / name).stat().st_mode) == mode, name
    write_json(tmp_path / "sub" / "a.json", {"x": 2})              # replacing a file keeps the rule
    assert stat.S_IMODE((tmp_path / "sub" / "a.json").stat().st_mode) == mode
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(writers)   # no temporary file left


def test_json_floats_have_six_significant_digits(tmp_path):
    write_json(tmp_path / "r.json", {"success_rate": 15.789473056793213, "tiny": 1.234567891e-7,
                                     "f32": np.float32(3.999999910593033), "t": torch.tensor(0.1234567),
                                     "arr": np.array([1 / 3, 2.0]), "nan": float("nan"), "none": None,
                                     "int": 12345678, "flag": True, "nested": [{"v": 2 / 3}]})
    text = (tmp_path / "r.json").read_text()
    got = json.loads(text)
    assert got["success_rate"] == 15.7895 and got["tiny"] == 1.23457e-7 and got["f32"] == 4.0
    assert got["t"] == 0.123457 and got["arr"] == [0.333333, 2.0] and got["nested"] == [{"v": 0.666667}]
    assert math.isnan(got["nan"]) and '"nan": NaN' in text and got["none"] is None
    assert got["int"] == 12345678 and got["flag"] is True


class _NotWeights:
    pass


def test_an_unreadable_checkpoint_says_what_is_wrong_with_it(tmp_path):
    import torch
    save_torch(tmp_path / "fold_1.pt", {"w": torch.ones(2)})
    whole = (tmp_path / "fold_1.pt").read_bytes()
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert load_torch(tmp_path / "legacy.pt")["w"].tolist() == [1.0, 1.0]      # the pre-zip format still loads
    torch.save({"w": _NotWeights()}, tmp_path / "objects.pt")
    files = {"empty.pt": b"", "cut.pt": whole[: len(whole) // 2], "text.pt": b"hello", "objects.pt": None}
    reasons = {"empty.pt": "the file is empty", "cut.pt": "not a file torch.save wrote, or cut short",
               "text.pt": "not a file torch.save wrote, or cut short",
               "objects.pt": "it holds Python objects besides weights, which are never unpickled here"}
    for name, content in files.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(TrustSerError) as info:
            load_torch(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name} is not a readable checkpoint ({reasons[name]})"


def test_progress_logs_quarters_when_stderr_is_not_a_terminal(caplog, monkeypatch):
    from utils.core import progress as module
    with caplog.at_level(logging.INFO, logger="trust-ser"):
        assert list(progress(range(8), desc="quick")) == list(range(8))         # done at once: no lines
        clock = iter(range(0, 100, 3))                                          # 3 s per quarter
        monkeypatch.setattr(module.time, "monotonic", lambda: next(clock))
        assert list(progress(range(8), desc="attack")) == list(range(8))
        assert list(progress(iter([1, 2]), desc="short")) == [1, 2]            # no total: no lines
    # the first quarter came after 3 s, before the loop had run 5 s
    assert [r.getMessage() for r in caplog.records] == ["attack: 4/8 (50%)", "attack: 6/8 (75%)", "attack: 8/8 (100%)"]


def run_in_process(script: str, *args: str) -> None:
    """A stage script run as __main__ in this process (its imports are paid once for the whole test)."""
    with mock.patch.object(sys, "argv", [script, *args]):
        runpy.run_path(str(REPO / script), run_name="__main__")


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_a_short_pipeline_run_writes_honours_the_umask(tmp_path, umask, mask, mode):
    """Demo corpus and preprocessed WAVs, splits, checkpoints, JSON, CSV, PNG and markdown alike."""
    config = tmp_path / "config.yml"
    config.write_text(f"data_dir:\n  demo: {tmp_path / 'corpus'}\nproject_dir: {tmp_path / 'project'}\n")
    umask(mask)
    flags = ["--config", str(config), "--dataset", "demo"]
    run = [*flags, "--pretrain_model", "apc", "--random_init", "--tiny", "--device", "cpu", "--num_epochs", "1",
           "--hidden_size", "16", "--folds", "1"]
    make_corpus(tmp_path / "corpus", n_speakers=5, utts_per_emotion=1)     # what demo.py --generate writes
    run_in_process("train_split_gen/demo.py", *flags[:2])
    run_in_process("preprocess_audio/preprocess_audio.py", *flags)
    run_in_process("experiment/finetune_single_thread.py", *run)
    run_in_process("trustworthy/fairness/fairness_evaluation.py", *run)
    run_in_process("trustworthy/plot_spider.py", *flags, "--output_dir", str(tmp_path / "profile"))
    run_in_process("trustworthy/report.py", *flags, "--output_dir", str(tmp_path / "report"))
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != config]
    assert {".wav", ".csv", ".json", ".pt", ".png", ".md"} <= {p.suffix for p in files}
    assert len([p for p in files if p.suffix == ".wav"]) == 2 * 20        # the corpus and its 16 kHz copy
    wrong = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != mode}
    assert not wrong


def test_predictions_are_read_by_class_name_and_as_earlier_versions_wrote_them(tmp_path):
    """Class names map to the order of the prob_<class> columns (names win over digits); index columns still read."""
    from utils.runs.predictions import read_predictions
    header = "key,speaker,gender,label,prediction,prob_1,prob_0\n"
    (tmp_path / "names.csv").write_text(header + "a,s1,F,0,1,0.2,0.8\n")
    (tmp_path / "old.csv").write_text("key,speaker,gender,label,prediction,prob_neu,prob_ang\n" + "a,s1,M,1,0,0.6,0.4\n")
    row, = read_predictions(tmp_path / "names.csv")
    assert (row["label"], row["prediction"], row["probs"]) == (1, 0, [0.2, 0.8])
    old, = read_predictions(tmp_path / "old.csv")
    assert (old["label"], old["prediction"]) == (1, 0)
