"""How much of the cache the features may take, and how the room left is planned: the memory budget one source's
stores share, the budgets' defaults, and which utterances fit as which tier."""
import logging
import os
import shutil
from itertools import accumulate
from pathlib import Path

import torch

from utils.features.shards import ShardStore

log = logging.getLogger("trust-ser")
GiB = 2 ** 30
_logged_budgets: set[Path] = set()      # cache folders whose budgets this process has logged


class MemoryBudget:
    """Bytes of (device) memory that stored features may take, shared by the stores of one source."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used = budget_bytes, 0
        self.disk_copies: list[tuple] = []   # (TieredStore, key): in memory and also on disk, the first to give way


def fitting(room: int, sizes: list[int]) -> int:
    """How many of the first sizes fit in room together."""
    return sum(1 for need in accumulate(sizes) if need <= room)


def plan_tiers(room: int, front_sizes: list[int], upgrades: list[int]) -> tuple[int, list[bool]]:
    """The front-end tier plan, in the order given (the training split first): the front ends of the first `kept`
    utterances, the longest run of them that fits `room`, then, in the same order, which of those also fit as
    hidden states in the rest (`upgrades`: the bytes a hidden state adds to its front end's size)."""
    kept = fitting(room, front_sizes)
    need, as_hidden = sum(front_sizes[:kept]), []
    for more in upgrades[:kept]:
        as_hidden.append(need + more <= room)
        need += more if as_hidden[-1] else 0
    return kept, as_hidden


def existing_folder(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def feature_budgets(cache_gb: float | None, memory_gb: float | None, device: torch.device,
                    cache_root: Path) -> tuple[int, int]:
    """Bytes of (memory, disk) the cached features may take: --memory_gb / --cache_gb, or what is free with a
    margin: 60% of free GPU memory (CUDA) or 30% of available host memory; the cache's present size plus
    80% of the free disk space. Logged once per process and cache folder: stages that prepare a source per
    fold (privacy, safety) recompute them, and free memory moves a little between folds."""
    if memory_gb is not None:
        memory = int(memory_gb * GiB)
    elif device.type == "cuda":
        memory = int(0.6 * torch.cuda.mem_get_info(device)[0])
    else:
        memory = int(0.3 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    if cache_gb is not None:
        disk = int(cache_gb * GiB)
    else:
        in_use = ShardStore(cache_root, cache_root, 0).used_bytes()
        disk = in_use + int(0.8 * shutil.disk_usage(existing_folder(cache_root)).free)
    if cache_root not in _logged_budgets:
        _logged_budgets.add(cache_root)
        log.info(f"feature cache budgets: {size_text(memory)} of {device.type} memory"
                 f"{'' if memory_gb is not None else ' (default; --memory_gb to change)'}, {size_text(disk)} on "
                 f"disk under {cache_root}{'' if cache_gb is not None else ' (default; --cache_gb to change)'}")
    return memory, disk


def size_text(n_bytes: int) -> str:
    """"5.9 GiB", or "0.5 MiB" below 1 GiB."""
    return f"{n_bytes / GiB:.1f} GiB" if n_bytes >= GiB else f"{n_bytes / 2**20:.1f} MiB"
