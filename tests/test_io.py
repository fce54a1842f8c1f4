"""utils/core/io.py: atomic writes honour the umask, JSON floats are rounded; utils/core/progress.py: plain lines in logs."""
import json
import logging
import math
import os
import stat

import numpy as np
import pytest
import torch

from utils.core.io import save_torch, write_bytes, write_json, write_text
from utils.core.progress import progress


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


def test_progress_logs_quarters_when_stderr_is_not_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="trust-ser"):
        assert list(progress(range(8), desc="attack")) == list(range(8))
        assert list(progress(iter([1, 2]), desc="short")) == [1, 2]            # no total: no lines
    assert [r.getMessage() for r in caplog.records] == ["attack: 2/8 (25%)", "attack: 4/8 (50%)",
                                                        "attack: 6/8 (75%)", "attack: 8/8 (100%)"]
