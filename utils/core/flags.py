"""Command-line parsing with the project's error policy: a bad flag is one `error: ...` line and exit status 2
(utils/core/errors.run_main), not a usage dump or a traceback from deep inside a run."""
import argparse
from pathlib import Path

from utils.core.errors import TrustSerError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise TrustSerError(f"{message} ({self.prog} --help lists the flags)")


def at_least(minimum: int):
    """An argparse type: an integer >= minimum."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return whole


def positive(text: str) -> float:
    """An argparse type: a number > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def number_from(minimum: float):
    """An argparse type: a number >= minimum."""
    def number(text: str) -> float:
        value = _number(text)
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum:g} or more, got {text}")
        return value
    return number


not_negative = number_from(0)


def device_name(text: str) -> str:
    """An argparse type: a device torch knows by that name (cpu, cuda, cuda:1, mps, ...)."""
    import torch
    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    return text


def file_to_write(text: str) -> Path:
    """An argparse type: the path of a file to write, not an existing folder."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path, e.g. {path / 'predictions.csv'}")
    return path


def folder_to_write(text: str) -> Path:
    """An argparse type: the path of a folder to write into, not an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return path


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
