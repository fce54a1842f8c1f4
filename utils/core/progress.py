"""Progress of a long loop: a tqdm bar on a terminal; when stderr is not one (log files, Slurm), a plain log line
at each quarter of a loop that takes a while, instead of a bar's carriage returns."""
import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

log = logging.getLogger("trust-ser")
T = TypeVar("T")
QUIET_SECONDS = 5.0     # a loop done sooner logs no progress


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    total = total if total is not None else len(iterable) if hasattr(iterable, "__len__") else None
    if sys.stderr.isatty():
        yield from tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
        return
    yield from _logged(iterable, total, desc)


def _logged(iterable: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """A line at each quarter of total reached once the loop has run QUIET_SECONDS (none without a total, or for
    fewer than 4 items: such loops are short, as are those done sooner)."""
    next_quarter, start = 1, time.monotonic()
    for done, item in enumerate(iterable, start=1):
        yield item
        if total and total >= 4 and done * 4 >= next_quarter * total:
            if time.monotonic() - start >= QUIET_SECONDS:
                log.info(f"{desc}: {done}/{total} ({100 * done / total:.0f}%)")
            next_quarter = done * 4 // total + 1
