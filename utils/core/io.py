"""Atomic writes (temporary file + rename) honouring the umask, and safe loading.

Every file the project writes goes through one of the write_* / save_* helpers here: a reader never sees a
half-written file, and the mode is what a plain open() would give (0644 under umask 022, 0600 under 077).
torch is imported by the checkpoint helpers only, so that the readers of JSON and CSV (the trust profile, the
report) do not load it.
"""
import csv
import io
import json
import math
import os
import pickle
import secrets
import zipfile
from pathlib import Path
from typing import Any, Iterable

from utils.core.errors import TrustSerError

SIGNIFICANT_DIGITS = 6      # of every float in a JSON result
SAVED_RELATIVE_ERROR = 0.5 * 10 ** (1 - SIGNIFICANT_DIGITS)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    if path.is_dir():
        raise TrustSerError(f"cannot write {path}: it is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new file beside path, created 0666 so the umask applies (tempfile.mkstemp would force 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def write_json(path: str | Path, obj: Any) -> None:
    """Floats rounded to SIGNIFICANT_DIGITS (NaN, inf and None kept as they are)."""
    text = json.dumps(_rounded(obj), indent=4, default=_to_builtin)
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def write_csv(path: str | Path, rows: Iterable[Iterable[Any]]) -> None:
    """Rows (the header first) as CSV, one line each ending in a newline."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text(path, buf.getvalue())


def save_torch(path: str | Path, obj: Any) -> None:
    import torch
    _atomic(Path(path), lambda f: torch.save(obj, f))


def write_wav(path: str | Path, audio, sr: int, subtype: str = "FLOAT") -> None:
    """A 1-D signal as WAV. subtype: "FLOAT" (32-bit float, preprocessed audio) or "PCM_16" (as corpora ship)."""
    import numpy as np
    import soundfile as sf
    samples = np.asarray(audio, dtype=np.float32)
    _atomic(Path(path), lambda f: sf.write(f, samples, sr, subtype=subtype, format="WAV"))


def save_figure(path: str | Path, fig, **savefig_kwargs) -> None:
    """A matplotlib figure (format from the suffix, e.g. .png), then closed."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip("."), **savefig_kwargs)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrustSerError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrustSerError(f"{path} is not valid JSON ({err})") from None


def load_torch(path: str | Path, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True; a clear error for missing or damaged files."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise TrustSerError(f"{path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for damaged archives
        reason = unreadable_checkpoint_reason(path, err)
        raise TrustSerError(f"{path} is not a readable checkpoint ({reason})") from None


def _starts_like_a_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def unreadable_checkpoint_reason(path: Path, err: Exception) -> str:
    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path) and not _starts_like_a_pickle(path):    # torch.save writes zip, once pickle
        return "not a file torch.save wrote, or cut short"
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err):
        return "it holds Python objects besides weights, which are never unpickled here"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def as_saved(obj: Any) -> Any:
    """What read_json gives back of write_json(obj): to compare a value with one that was saved."""
    return json.loads(json.dumps(_rounded(obj), default=_to_builtin))


def saved_number(value: float) -> str:
    """A float as results save it: SIGNIFICANT_DIGITS, no binary noise (7.32358, not 7.323580000000001)."""
    return f"{value:.{SIGNIFICANT_DIGITS}g}"


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(saved_number(obj)) if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if hasattr(obj, "tolist"):      # numpy / torch scalars and arrays
        return _rounded(obj.tolist())
    return obj


def _to_builtin(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
