"""Atomic writes (temporary file + rename) and safe loading."""
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from utils.core.errors import TrustSerError


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())     # mkstemp makes 0600; a plain open() would honour the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Floats rounded to 6 significant digits (NaN, inf and None kept as they are)."""
    text = json.dumps(_rounded(obj), indent=4, default=_to_builtin)
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def save_torch(path: str | Path, obj: Any) -> None:
    _atomic(Path(path), lambda f: torch.save(obj, f))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrustSerError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TrustSerError(f"{path} is not valid JSON ({err})") from None


def load_torch(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True; a clear error for missing or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise TrustSerError(f"{path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for damaged archives
        raise TrustSerError(f"{path} is not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.6g}") if math.isfinite(obj) else obj
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
