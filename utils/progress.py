"""Progress of long steps on stderr: a tqdm bar on a terminal, a plain line every 30 s otherwise (logs)."""
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
LINE_EVERY_S = 30.0


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Yield from `iterable` while showing how far along it is."""
    if sys.stderr.isatty():
        yield from tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    for done, item in enumerate(iterable, 1):
        yield item
        now = time.monotonic()
        if now - last >= LINE_EVERY_S:
            last = now
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} after {now - start:.0f} s", file=sys.stderr, flush=True)
