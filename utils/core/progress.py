"""Progress of a long loop: a tqdm bar on a terminal; when stderr is not one (log files, Slurm), a plain log line
at each quarter instead of a bar's carriage returns."""
import logging
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

log = logging.getLogger("trust-ser")
T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    total = total if total is not None else len(iterable) if hasattr(iterable, "__len__") else None
    if sys.stderr.isatty():
        yield from tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
        return
    yield from _logged(iterable, total, desc)


def _logged(iterable: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """A line at each quarter of total (none without a total, or for fewer than 4 items: such loops are short)."""
    next_quarter = 1
    for done, item in enumerate(iterable, start=1):
        yield item
        if total and total >= 4 and done * 4 >= next_quarter * total:
            log.info(f"{desc}: {done}/{total} ({100 * done / total:.0f}%)")
            next_quarter = done * 4 // total + 1
