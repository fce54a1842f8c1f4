"""Where stored features are kept: the device's memory, within a budget the stores of one source share, and disk
shards (utils/features/shards.py) within the whole cache's disk budget."""
from contextlib import nullcontext

import torch

from utils.features.budget import MemoryBudget
from utils.features.source import to_device
from utils.features.shards import ShardStore


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class TieredStore:
    """Tensors of one kind by key: memory (on the device) holds what is on disk nowhere first, then copies of disk
    entries; a tensor computed on the device stays there (only the disk write copies it to the host)."""

    def __init__(self, device: torch.device, pool: MemoryBudget, disk: ShardStore | None):
        self.device, self.pool, self.disk = device, pool, disk
        self.memory: dict[str, torch.Tensor] = {}
        self.memory_bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self.memory or (self.disk is not None and key in self.disk)

    def filling(self):
        """Held while computing what is missing (ShardStore.filling); nothing to hold without a disk."""
        return self.disk.filling() if self.disk else nullcontext()

    def refresh(self) -> None:
        if self.disk:
            self.disk.refresh()

    def frames(self, key: str) -> int | None:
        """Frames of the stored tensor [*, F, *] (memory or disk), None if it has none."""
        if key in self.memory:
            return self.memory[key].shape[1]
        return self.disk.frames(key) if self.disk and key in self.disk else None

    def room(self) -> int:
        """Bytes left in the memory and disk budgets together."""
        room = self.pool.budget - self.pool.used
        return room + (self.disk.budget - self.disk.used_bytes() if self.disk else 0)

    def remember(self, key: str, stored: torch.Tensor, on_disk: bool) -> bool:
        """Keep it in memory if it fits; an entry stored nowhere else may push out copies of disk entries, so
        that memory and disk together hold as much as they can."""
        size, pool = nbytes(stored), self.pool
        while not on_disk and pool.used + size > pool.budget and pool.disk_copies:
            store, copy = pool.disk_copies.pop()
            store.forget(copy)
        if pool.used + size > pool.budget:
            return False
        self.memory[key] = stored.to(self.device)      # no copy for what was computed on the device
        self.memory_bytes += size
        pool.used += size
        if on_disk:
            pool.disk_copies.append((self, key))
        return True

    def forget(self, key: str) -> None:
        size = nbytes(self.memory.pop(key))
        self.memory_bytes -= size
        self.pool.used -= size

    def keep(self, items: list[tuple[str, torch.Tensor]]) -> set[str]:
        """Disk shards for what the disk budget allows, memory for what fits; the keys kept in neither."""
        written = self.disk.write(items) if self.disk and items else set()
        return {key for key, one in items if not self.remember(key, one, on_disk=key in written) and key not in written}

    def get(self, key: str) -> torch.Tensor | None:
        """The stored tensor on the device; None if not stored (or its shard turned out damaged: deleted)."""
        if key in self.memory:
            return self.memory[key]
        if self.disk and key in self.disk:
            stored = self.disk.read(key, pin=self.device.type == "cuda")
            if stored is not None:
                return self.memory[key] if self.remember(key, stored, on_disk=True) else to_device(stored, self.device)
        return None

    def disk_bytes(self) -> int:
        return self.disk.used_bytes(self.disk.folder) if self.disk else 0
