"""Feature shards: large contiguous files of fp16, bf16 or fp32 tensors with an index, all under one disk budget.

A shard (shard-<random>.bin) is MAGIC, the index's length (8 bytes, little-endian), the index as JSON
({"data_bytes": n, "entries": {key: [offset, shape, crc32]}}, padded to 64 bytes; an entry of another type than
fp16 has a fourth field naming it, "float32" or "bfloat16"), then the data: each tensor's raw bytes (numpy has no
bfloat16, so they are viewed as their torch type, not a numpy one). It is written whole to a temporary file and
renamed into place, and never changed afterwards, so readers need no lock and memory-map it. A shard whose size
disagrees with its index (truncated) is deleted when found; an entry whose checksum fails (checked on its first
read in a process) deletes its shard. Either way only that shard's utterances are recomputed."""
import json
import logging
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from utils.core.io import write_bytes

log = logging.getLogger("trust-ser")
MAGIC = b"TSERSHD1"
SHARD_BYTES = 256 << 20      # large files: few opens per epoch, cheap on network file systems
ENTRY_BYTES = 256            # at most what a tensor adds to a shard besides its data: its index entry (~100 bytes),
                             # and the shard's magic, header and padding (~120) where it is the shard's only entry


class ShardStore:
    """The shards of one folder; `budget_root` is the folder whose shards, all together, stay within
    `budget_bytes` (the whole cache: every backbone and kind)."""

    def __init__(self, folder: Path, budget_root: Path, budget_bytes: int):
        self.folder, self.budget_root, self.budget = folder, budget_root, budget_bytes
        self.entries: dict[str, tuple[Path, int, tuple, int, str]] = {}   # key -> shard, offset, shape, crc32, dtype
        self.maps: dict[Path, np.memmap] = {}
        self.verified: set[str] = set()

    @contextmanager
    def filling(self):
        """Held while computing what is missing: a second process waits, then finds it on disk."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.folder / ".fill.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info(f"waiting for another process filling the feature cache in {self.folder}")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def frames(self, key: str) -> int:
        return self.entries[key][2][1]

    def refresh(self) -> None:
        """Index the shards written since the last look (by any process); delete damaged ones."""
        for path in sorted(self.folder.glob("shard-*.bin")):
            if path not in self.maps:
                self._open(path)

    def _open(self, path: Path) -> None:
        try:
            data = np.memmap(path, dtype=np.uint8, mode="r")
            header_len = int.from_bytes(bytes(data[8:16]), "little")
            index = json.loads(bytes(data[16:16 + header_len]))
            if bytes(data[:8]) != MAGIC or len(data) != 16 + header_len + index["data_bytes"]:
                raise ValueError(f"{len(data)} bytes, the index says {16 + header_len + index['data_bytes']}")
            start = 16 + header_len
            entries = {key: (path, start + offset, tuple(shape), crc, _dtype(*dtype))
                       for key, (offset, shape, crc, *dtype) in index["entries"].items()}
        except (OSError, ValueError, KeyError, TypeError) as err:   # json errors are ValueErrors
            self._drop(path, f"unreadable or truncated ({err})")
            return
        self.maps[path] = data
        self.entries.update(entries)

    def _drop(self, path: Path, why: str) -> None:
        log.warning(f"feature cache shard {path} is {why}: deleted, its utterances will be recomputed")
        path.unlink(missing_ok=True)
        self.maps.pop(path, None)
        for key in [k for k, e in self.entries.items() if e[0] == path]:
            del self.entries[key]

    def read(self, key: str, pin: bool = False) -> torch.Tensor | None:
        """The stored tensor, copied once out of the shard (into pinned memory with `pin`, for a copy to CUDA that
        overlaps compute), or None if its shard turned out damaged."""
        path, offset, shape, crc, dtype = self.entries[key]
        dtype = getattr(torch, dtype)
        stored = self.maps[path][offset: offset + dtype.itemsize * int(np.prod(shape))]
        raw = torch.empty(len(stored), dtype=torch.uint8, pin_memory=pin)
        raw.numpy()[:] = stored
        if key not in self.verified:
            if zlib.crc32(raw.numpy()) != crc:
                self._drop(path, f"damaged (checksum of {key})")
                return None
            self.verified.add(key)
        return raw.view(dtype).reshape(shape)

    def used_bytes(self, folder: Path | None = None) -> int:
        root = folder or self.budget_root
        return sum(p.stat().st_size for p in root.rglob("shard-*.bin")) if root.is_dir() else 0

    def write(self, items: list[tuple[str, torch.Tensor]]) -> set[str]:
        """Write as many of `items` (fp16, bf16 or fp32, in order) as the budget leaves room for into new shards;
        their keys."""
        written = set()
        with FileLock(str(self.budget_root / ".budget.lock")):   # budget shared by every process and folder
            room = self.budget - self.used_bytes()
            shard = _Shard()
            for key, tensor in items:
                entry = _Entry(key, tensor)
                if shard.entries and shard.size_with(entry) > SHARD_BYTES:
                    room -= self._save(shard)
                    written.update(shard.entries)
                    shard = _Shard()
                if shard.size_with(entry) > room:
                    continue        # a shorter utterance further on may still fit
                shard.add(entry)
            if shard.entries:
                self._save(shard)
                written.update(shard.entries)
        return written

    def _save(self, shard: "_Shard") -> int:
        path = self.folder / f"shard-{uuid.uuid4().hex}.bin"
        write_bytes(path, shard.to_bytes())
        self._open(path)
        return path.stat().st_size


def _dtype(name: str = "float16") -> str:
    if name not in ("float16", "float32", "bfloat16"):
        raise ValueError(f"unknown dtype {name!r}")
    return name


class _Entry:
    """A tensor's bytes on the host (one copy, from wherever it is) and their checksum (computed once)."""

    def __init__(self, key: str, tensor: torch.Tensor):
        self.key, self.shape = key, list(tensor.shape)
        self.dtype = _dtype(str(tensor.dtype).removeprefix("torch."))
        self.raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data
        self.crc = zlib.crc32(self.raw)

    def index_value(self, offset: int) -> tuple[list, int]:
        """Its index entry at `offset` and the entry's length in the index's JSON text."""
        value = [offset, self.shape, self.crc] + ([self.dtype] if self.dtype != "float16" else [])
        return value, len(json.dumps({self.key: value})) - 2


class _Shard:
    """A shard being assembled; knows its exact file size before it is written."""

    def __init__(self):
        self.entries: dict[str, list] = {}
        self.blobs: list = []
        self.data_bytes = 0
        self.entries_chars = 0     # length of the entries' JSON text, separators included

    def size_with(self, entry: _Entry) -> int:
        _, chars = entry.index_value(self.data_bytes)
        return self._size(self.data_bytes + entry.raw.nbytes, self.entries_chars + chars + (2 if self.entries else 0))

    def add(self, entry: _Entry) -> None:
        value, chars = entry.index_value(self.data_bytes)
        self.entries_chars += chars + (2 if self.entries else 0)
        self.entries[entry.key] = value
        self.blobs.append(entry.raw)
        self.data_bytes += entry.raw.nbytes

    @staticmethod
    def _size(data_bytes: int, entries_chars: int) -> int:
        header = len(json.dumps({"data_bytes": data_bytes, "entries": {}})) + entries_chars
        return 16 + header + (-(16 + header) % 64) + data_bytes

    def to_bytes(self) -> bytes:
        header = json.dumps({"data_bytes": self.data_bytes, "entries": self.entries}).encode()
        header += b" " * (-(16 + len(header)) % 64)
        return b"".join([MAGIC, len(header).to_bytes(8, "little"), header, *self.blobs])
