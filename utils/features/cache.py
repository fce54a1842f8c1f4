"""Where the head's input comes from: frozen hidden states computed once (memory + disk cache), the cached input
of a trainable last layer, or a live backbone."""
import hashlib
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from itertools import accumulate
from pathlib import Path

import torch

from utils.data.audio import BadAudioError, load_utterance
from utils.data.utterances import Utterance, length_sorted_batches, pad_features, pad_waveforms
from utils.core.errors import TrustSerError
from utils.core.io import load_torch
from utils.core.progress import progress
from utils.features.shards import ENTRY_BYTES, SHARD_BYTES, ShardStore

log = logging.getLogger("trust-ser")


class AudioBank:
    """Cropped 16 kHz waveforms, read once per process; unreadable files raise, or are skipped with --skip_bad."""

    def __init__(self, max_seconds: float, skip_bad: bool):
        self.max_seconds, self.skip_bad = max_seconds, skip_bad
        self.wavs: dict[str, torch.Tensor] = {}
        self.bad: dict[str, str] = {}

    def get(self, path: str) -> torch.Tensor | None:
        if path not in self.wavs and path not in self.bad:
            try:
                self.wavs[path] = load_utterance(path, self.max_seconds)
            except BadAudioError as err:
                if not self.skip_bad:
                    raise TrustSerError(f"{err} (pass --skip_bad to skip such files)") from None
                log.warning(f"skipping: {err}")
                self.bad[path] = str(err)
        return self.wavs.get(path)


def autocast_for(device: torch.device):
    """bf16 autocast for frozen passes on CUDA; plain fp32 on CPU so CPU results are exact."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


class LiveFeatures:
    """Runs the backbone on every batch (--finetune unfrozen, or --no_cache: the original's per-epoch loop)."""

    def __init__(self, backbone, audio: AudioBank, device: torch.device, round_like_cache: bool):
        self.backbone, self.audio, self.device = backbone, audio, device
        self.round_like_cache = round_like_cache   # frozen --no_cache: same fp16 rounding as the cache

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        return [u for u in utts if self.audio.get(u.path) is not None]

    def length(self, u: Utterance) -> int:
        return len(self.audio.get(u.path))

    def fetch(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded waveforms on the device (what can be read ahead of the batch before)."""
        wav, lengths = pad_waveforms([self.audio.get(u.path) for u in utts])
        return _to_device(wav, self.device), lengths.to(self.device)

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        wav, lengths = fetched
        with torch.set_grad_enabled(grad), (nullcontext() if grad else autocast_for(self.device)):
            hidden, _, mask = self.backbone(wav, lengths)
        if self.round_like_cache:
            hidden = hidden.to(torch.float16)
        return hidden.float(), mask

    def batch(self, utts: list[Utterance], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self.fetch(utts), grad)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to the device; through pinned memory on CUDA, so the copy overlaps compute."""
    if device.type != "cuda" or t.is_cuda:
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def prefetched(source, groups: list[list[Utterance]], grad: bool = False):
    """(utterances, (hidden, mask)) for each group in turn, while a background thread reads the next group
    (disk -> memory -> device, and any frozen features that are computed live). Only the trainable part
    (source.finish) runs in the caller's thread, after the previous step, so results do not change."""
    if not hasattr(source, "fetch"):          # a source without a read-ahead part
        yield from ((g, source.batch(g, grad)) for g in groups)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(source.fetch, groups[0]) if groups else None
        for i, group in enumerate(groups):
            fetched = pending.result()
            if i + 1 < len(groups):
                pending = pool.submit(source.fetch, groups[i + 1])
            yield group, source.finish(fetched, grad)


class MemoryBudget:
    """Bytes of (device) memory that stored features may take, shared by the stores of one source."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used = budget_bytes, 0
        self.disk_copies: list[tuple["_StoredFeatures", str]] = []   # (store, key) in memory and also on disk


class _StoredFeatures:
    """What a frozen backbone pass gives per utterance ([L, F, D], as `dtype`), computed once in length-sorted
    batches and reused across epochs, folds and scripts, keyed by what is stored (`kind`), backbone weights,
    audio file (path, size, mtime), crop length and precision. Three tiers, filled in the order utterances are
    prepared (the stage scripts prepare the training split first: it is read most): disk shards
    (utils/features/shards.py) up to `disk_budget_bytes` for the whole cache, memory (on the device) up to
    `memory_budget_bytes` (what is on disk nowhere first, then copies of disk entries), and for what fits in
    neither, the same frozen pass run live whenever a batch needs it (eval mode, no_grad, fp16-rounded,
    length-sorted within the batch).

    Subclasses say what is stored (`_encode`) and how a batch is made of it (`finish`)."""

    kind: str   # names the disk folder and enters the key, so different stored things never mix
    dtype = torch.float16

    def __init__(self, backbone, audio: AudioBank, device: torch.device, batch_size: int,
                 cache_root: Path | None, memory_budget_bytes: int, disk_budget_bytes: int | None = None,
                 memory: MemoryBudget | None = None):
        self.backbone, self.audio, self.device, self.batch_size = backbone, audio, device, batch_size
        self.cache_root = cache_root
        self.pool = memory or MemoryBudget(memory_budget_bytes)
        self.memory: dict[str, torch.Tensor] = {}
        self.keys: dict[str, str] = {}
        self.frames: dict[str, int] = {}      # key -> frames, for every prepared utterance, stored or live
        self.memory_bytes = 0
        self.precision = "bf16" if device.type == "cuda" else "fp32"
        self.stats = {"computed": 0, "from_disk": 0, "from_memory": 0, "live": 0}   # live: kept nowhere
        self.live: set[str] = set()
        self.store = None
        if cache_root is not None:
            if disk_budget_bytes is None:
                disk_budget_bytes = shutil.disk_usage(_existing(cache_root)).free
            self.store = ShardStore(self._folder(), cache_root, disk_budget_bytes)

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored tensors [L, B, F, D] and frame lengths [B] of a padded batch."""
        raise NotImplementedError

    def _key(self, path: str) -> str:
        """Cache key of the file as it is now (weights, path, size, mtime, crop, precision); kept per process."""
        st = os.stat(path)
        ident = (f"{self.kind}|{self.backbone.weights_id}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
                 f"|{self.audio.max_seconds}|{self.precision}")
        if self.dtype != torch.float16:       # fp16, the first stored type, is left out: older caches stay valid
            ident += f"|{self.dtype}"
        self.keys[path] = hashlib.sha1(ident.encode()).hexdigest()
        return self.keys[path]

    def _folder(self) -> Path:
        return self.cache_root / self.backbone.name / self.kind

    def _remember(self, key: str, stored: torch.Tensor, on_disk: bool) -> bool:
        """Keep it in memory if it fits; an utterance stored nowhere else may push out copies of disk entries,
        so that memory and disk together hold as much as they can."""
        size, pool = _nbytes(stored), self.pool
        while not on_disk and pool.used + size > pool.budget and pool.disk_copies:
            store, copy = pool.disk_copies.pop()
            store._forget(copy)
        if pool.used + size > pool.budget:
            return False
        self.memory[key] = stored.to(self.device)
        self.memory_bytes += size
        pool.used += size
        if on_disk:
            pool.disk_copies.append((self, key))
        return True

    def _forget(self, key: str) -> None:
        size = _nbytes(self.memory.pop(key))
        self.memory_bytes -= size
        self.pool.used -= size

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        """Make sure every utterance is stored, or known to be computed live; returns those whose audio is
        readable. One process at a time fills a cache folder; the next finds the work done."""
        with self.store.filling() if self.store else nullcontext():
            if self.store:
                self.store.refresh()
                self._read_old_layout()
            missing = []
            for u in utts:
                if u.path in self.audio.bad:
                    continue
                if not os.path.isfile(u.path):
                    self.audio.get(u.path)      # raises, or records it as bad with --skip_bad
                    continue
                key = self._key(u.path)
                if key in self.memory:
                    self.stats["from_memory"] += 1
                elif self.store and key in self.store:
                    self.stats["from_disk"] += 1
                    self.frames[key] = self.store.frames(key)
                elif key not in self.live:
                    missing.append(u)
            self._compute(missing)
        return [u for u in utts if u.path not in self.audio.bad]

    def _frozen_pass(self, utts: list[Utterance]):
        """(utterance, stored tensor [L, F, D]) for each utterance, in length-sorted batches."""
        lengths = [len(self.audio.get(u.path)) for u in utts]
        for idx in length_sorted_batches(lengths, self.batch_size):
            batch_utts = [utts[i] for i in idx]
            wav, wav_len = pad_waveforms([self.audio.get(u.path) for u in batch_utts])
            with torch.no_grad(), autocast_for(self.device):
                stored, n_frames = self._encode(_to_device(wav, self.device), wav_len.to(self.device))
            stored = stored.to(self.dtype)
            for i, u in enumerate(batch_utts):
                yield u, stored[:, i, : int(n_frames[i])].contiguous()

    def _compute(self, utts: list[Utterance]) -> None:
        """The frozen pass over utterances not stored yet: disk shards, then memory, for those that fit the room
        left, in the order given (the training split first); the rest run live, and are not computed now."""
        unique = list({u.path: u for u in utts if self.audio.get(u.path) is not None}.values())
        frames = self._record_frames(unique)
        kept = _fitting(self._room(), [n * self._bytes_per_frame() + ENTRY_BYTES for n in frames])
        for u in unique[kept:]:
            self._run_live(self.keys[u.path])
        unique = unique[:kept]
        if not unique:
            return
        self.backbone.eval()
        pending, pending_bytes = [], 0
        passes = self._frozen_pass(unique)
        desc = f"{self.backbone.name} {self.kind} features"
        for u, one in progress(passes, total=len(unique), desc=desc):
            key = self.keys[u.path]
            self.stats["computed"] += 1
            if self.store:
                pending.append((key, one.cpu()))
                pending_bytes += _nbytes(one)
                if pending_bytes >= SHARD_BYTES:
                    self._write(pending)
                    pending, pending_bytes = [], 0
            elif not self._remember(key, one, on_disk=False):
                self._run_live(key)
        self._write(pending)

    def _record_frames(self, utts: list[Utterance]) -> list[int]:
        """The frames the backbone gives each utterance (what its stored tensor or live pass will have), kept."""
        frames = self.backbone.frame_lengths(torch.tensor([len(self.audio.get(u.path)) for u in utts])).tolist()
        self.frames.update((self.keys[u.path], n) for u, n in zip(utts, frames))
        return frames

    def _bytes_per_frame(self) -> int:
        """What one frame of a stored tensor takes ([L, F, D]: L hidden states of D values)."""
        return self.backbone.num_layers * self.backbone.hidden_dim * self.dtype.itemsize

    def _room(self) -> int:
        """Bytes left in the memory and disk budgets together."""
        room = self.pool.budget - self.pool.used
        return room + (self.store.budget - self.store.used_bytes() if self.store else 0)

    def _write(self, pending: list[tuple[str, torch.Tensor]]) -> None:
        """Disk shards for what the budget allows; memory for what fits; the rest will run live."""
        written = self.store.write(pending) if pending else set()
        for key, one in pending:
            if not self._remember(key, one, on_disk=key in written) and key not in written:
                self._run_live(key)

    def _run_live(self, key: str) -> None:
        self.live.add(key)
        self.stats["live"] = len(self.live)

    def _read_old_layout(self) -> None:
        """A cache of the earlier layout (one .pt per utterance, same keys) is moved into shards, within the
        budget; its files are deleted either way."""
        old = sorted(self._folder().glob("??/*.pt"))
        if not old:
            return
        log.info(f"moving {len(old)} per-utterance feature files of the old cache layout in {self._folder()} "
                 f"into shards")
        pending, pending_bytes = [], 0
        for i, path in enumerate(old):
            try:
                if path.stem not in self.store:
                    pending.append((path.stem, load_torch(path)))
                    pending_bytes += _nbytes(pending[-1][1])
            except TrustSerError as err:
                log.warning(f"dropping unreadable old cache entry: {err}")
            if pending and (pending_bytes >= SHARD_BYTES or i == len(old) - 1):
                self.store.write(pending)
                pending, pending_bytes = [], 0
        for path in old:
            path.unlink(missing_ok=True)
        for folder in {p.parent for p in old}:
            if not any(folder.iterdir()):
                folder.rmdir()

    def _stored(self, key: str) -> torch.Tensor | None:
        if key in self.memory:
            return self.memory[key]
        if self.store and key in self.store:
            stored = self.store.read(key)
            if stored is not None:       # None: a damaged shard, deleted; computed live from now on
                kept = self._remember(key, stored, on_disk=True)
                return self.memory[key] if kept else _to_device(stored, self.device)
        return None

    def get(self, u: Utterance) -> torch.Tensor:
        return self.fetch_stored([u])[0]

    def fetch_stored(self, utts: list[Utterance]) -> list[torch.Tensor]:
        """Each utterance's stored tensor on the device; what is not stored runs through the frozen pass now."""
        found = [self._stored(self.keys.get(u.path) or self._key(u.path)) for u in utts]
        live = [u for u, f in zip(utts, found) if f is None]
        computed = dict(self._frozen_pass(live)) if live else {}
        return [f if f is not None else computed[u] for u, f in zip(utts, found)]

    def length(self, u: Utterance) -> int:
        key = self.keys.get(u.path) or self._key(u.path)
        return self.frames[key] if key in self.frames else self.get(u).shape[1]

    def fetch(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored fp16 tensors of a batch, zero-padded to [L, B, F, D], and the mask [B, F]."""
        return pad_features(self.fetch_stored(utts))

    def batch(self, utts: list[Utterance], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self.fetch(utts), grad)

    def disk_bytes(self) -> int:
        return self.store.used_bytes(self._folder()) if self.store else 0


def _fitting(room: int, sizes: list[int]) -> int:
    """How many of the first sizes fit in room together."""
    return sum(1 for need in accumulate(sizes) if need <= room)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


class FrontEndFeatures(_StoredFeatures):
    """The output of a backbone's deterministic front end (wav2vec 2.0 / WavLM / HuBERT / data2vec: the CNN
    encoder, which has no dropout and never trains), [1, F, C], stored as the hidden states are: the same in train
    and eval mode, so a batch needs only run the rest of the backbone. Stored in the type the frozen pass gives
    it in: bf16 under CUDA's autocast (the base models' CNN ends in a bf16 convolution and GELU, so fp32 would
    double the bytes and add no precision; a layer-norm CNN, in large models, ends in fp32 there, and its bf16
    rounding is about that of the bf16 projection after it), fp32 on CPU, so that what is computed from it there
    equals the unbounded cache as closely as a live pass does (fp16 front ends: 8e-7 probability difference on
    the tiny CPU test against 6e-8)."""

    kind = "front_end"

    def __init__(self, *args, dtype: torch.dtype | None = None, **kwargs):
        """As _StoredFeatures; `dtype` overrides the stored type (tests: bf16 on CPU)."""
        super().__init__(*args, **kwargs)
        self.dtype = dtype or (torch.bfloat16 if self.precision == "bf16" else torch.float32)   # bf16 on CUDA

    def _bytes_per_frame(self) -> int:
        return self.backbone.front_end_dim * self.dtype.itemsize

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        front, n_frames = self.backbone.front_end(wav, lengths)
        return front.unsqueeze(0), n_frames

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        stored, mask = fetched
        return stored[0].float(), mask

    def stored_frames(self, path: str) -> int | None:
        """Frames of the utterance's stored front end (memory or disk), None if it has none."""
        key = self.keys.get(path) or self._key(path)
        if key in self.memory:
            return self.memory[key].shape[1]
        return self.store.frames(key) if self.store and key in self.store else None


class CachedFeatures(_StoredFeatures):
    """A frozen backbone's hidden states [L, F, D], stored; batches are just padded.

    Backbones with a deterministic front end (front_end_is_deterministic) get a second tier in the same disk and
    memory budgets: what does not fit as hidden states is kept as the front end's output (FrontEndFeatures; for
    base models 512 values per frame, bf16 on CUDA and fp32 on CPU (`front_end_dtype` overrides it), against
    12 x 768 fp16 ones: 1/18 of the bytes on CUDA, 1/9 on CPU), and only the layers after it run live. Each
    prepare call splits the room left in both budgets in the order given (the training split first: it is read
    most): front ends while they fit, then hidden states in place of front ends while the rest holds them; the
    utterances after those whose front ends fit run the whole backbone live, and are not computed in prepare.
    Front ends save the most backbone time per byte (a base model's CNN is about a third of its FLOPs in a ninth
    or less of the bytes), so they come first."""

    kind = "hidden"

    def __init__(self, backbone, audio: AudioBank, device: torch.device, batch_size: int,
                 cache_root: Path | None, memory_budget_bytes: int, disk_budget_bytes: int | None = None,
                 front_end_dtype: torch.dtype | None = None):
        super().__init__(backbone, audio, device, batch_size, cache_root, memory_budget_bytes, disk_budget_bytes)
        self.front_ends = None
        if backbone.front_end_is_deterministic:
            self.front_ends = FrontEndFeatures(backbone, audio, device, batch_size, cache_root, memory_budget_bytes,
                                               self.store.budget if self.store else None, memory=self.pool,
                                               dtype=front_end_dtype)
            self.stats["live_from_front_end"] = 0   # of the live ones, those that start from a stored front end
        self.from_front_end: set[str] = set()

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, n_frames, _ = self.backbone(wav, lengths)
        return hidden, n_frames

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = fetched
        return hidden.float(), mask

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        front_store = self.front_ends.store if self.front_ends else None
        with front_store.filling() if front_store else nullcontext():
            if front_store:
                front_store.refresh()
            return super().prepare(utts)

    def _compute(self, utts: list[Utterance]) -> None:
        if not self.front_ends:
            return super()._compute(utts)
        unique = list({u.path: u for u in utts if self.audio.get(u.path) is not None}.values())
        todo = []
        for u in unique:
            frames = self.front_ends.stored_frames(u.path)
            if frames is None:
                todo.append(u)
            else:                       # kept as a front end by an earlier call or process
                self.frames[self.keys[u.path]] = frames
                self._run_live(self.keys[u.path], from_front_end=True)
        if not todo:
            return
        frames = self._record_frames(todo)
        kept, hidden_kept = self._plan_tiers(todo, frames)
        for u in todo[kept:]:           # room for neither: the whole backbone runs live, nothing is computed now
            self._run_live(self.keys[u.path])
        if kept:
            self._compute_tiers(todo[:kept], hidden_kept)

    def _plan_tiers(self, utts: list[Utterance], frames: list[int]) -> tuple[int, set[str]]:
        """What the room left in both budgets holds, in the order given (the training split first): the front ends
        of the first `kept` utterances, the longest run of them that fits, then, in the same order, the hidden
        states of as many of those as the rest holds in place of their front ends (`hidden_kept`, paths).
        Every entry counts ENTRY_BYTES for its shard index, also in memory, where it takes none."""
        front_per_frame, hidden_per_frame = self.front_ends._bytes_per_frame(), self._bytes_per_frame()
        room = self._room()
        sizes = [n * front_per_frame + ENTRY_BYTES for n in frames]
        kept = _fitting(room, sizes)
        need, hidden_kept = sum(sizes[:kept]), set()
        for u, n in zip(utts[:kept], frames):
            more = n * (hidden_per_frame - front_per_frame)
            if need + more <= room:
                hidden_kept.add(u.path)
                need += more
        return kept, hidden_kept

    def _compute_tiers(self, utts: list[Utterance], hidden_kept: set[str]) -> None:
        """One pass (front end, then the layers from it) over utts: hidden states for `hidden_kept`, front ends
        for the others (and for hidden states that turn out not to fit), stored as far as the budgets go (the plan
        leaves room to spare; only where the disk's and memory's rests are each too small for an utterance that
        fits their sum does one run whole)."""
        self.backbone.eval()
        hidden_items, front_items, pending_bytes = [], [], 0
        desc = f"{self.backbone.name} {self.kind} features (+ {FrontEndFeatures.kind})"
        for u, front, hidden in progress(self._two_tier_pass(utts), total=len(utts), desc=desc):
            key, front_key = self.keys[u.path], self.front_ends._key(u.path)
            self.stats["computed"] += 1
            if u.path in hidden_kept:
                hidden_items.append((key, hidden.cpu(), front_key, front.cpu()))
                pending_bytes += _nbytes(hidden)
            else:
                front_items.append((key, front_key, front.cpu()))
                pending_bytes += _nbytes(front)
            if pending_bytes >= SHARD_BYTES:
                self._write_tiers(hidden_items, front_items)
                hidden_items, front_items, pending_bytes = [], [], 0
        self._write_tiers(hidden_items, front_items)

    def _two_tier_pass(self, utts: list[Utterance]):
        """(utterance, front end [1, F, C], hidden states [L, F, D]) in length-sorted batches; the layers run
        from the front end, as forward() does."""
        lengths = [len(self.audio.get(u.path)) for u in utts]
        for idx in length_sorted_batches(lengths, self.batch_size):
            batch_utts = [utts[i] for i in idx]
            wav, wav_len = pad_waveforms([self.audio.get(u.path) for u in batch_utts])
            with torch.no_grad(), autocast_for(self.device):
                front, n_frames = self.backbone.front_end(_to_device(wav, self.device), wav_len.to(self.device))
                hidden, _, _ = self.backbone.forward_from_front_end(front, n_frames)
            front, hidden = front.to(self.front_ends.dtype), hidden.to(self.dtype)
            for i, u in enumerate(batch_utts):
                n = int(n_frames[i])
                yield u, front[i, :n].unsqueeze(0).contiguous(), hidden[:, i, :n].contiguous()

    def _write_tiers(self, hidden_items: list, front_items: list) -> None:
        written = self.store.write([(k, h) for k, h, _, _ in hidden_items]) if self.store and hidden_items else set()
        for key, hidden, front_key, front in hidden_items:
            if not self._remember(key, hidden, on_disk=key in written) and key not in written:
                front_items.append((key, front_key, front))
        fronts = self.front_ends
        written = fronts.store.write([(k, f) for _, k, f in front_items]) if fronts.store and front_items else set()
        for key, front_key, front in front_items:
            kept = fronts._remember(front_key, front, on_disk=front_key in written) or front_key in written
            self._run_live(key, from_front_end=kept)

    def _run_live(self, key: str, from_front_end: bool = False) -> None:
        super()._run_live(key)
        if from_front_end:
            self.from_front_end.add(key)
            self.stats["live_from_front_end"] = len(self.from_front_end)

    def fetch_stored(self, utts: list[Utterance]) -> list[torch.Tensor]:
        """As _StoredFeatures.fetch_stored; what has only a front end stored runs the layers from it."""
        if not self.front_ends:
            return super().fetch_stored(utts)
        found = {u.path: self._stored(self.keys.get(u.path) or self._key(u.path)) for u in utts}
        missing = [u for u in utts if found[u.path] is None]
        fronts = {u.path: self.front_ends._stored(self.front_ends.keys.get(u.path) or self.front_ends._key(u.path))
                  for u in missing}
        from_front = [(u.path, fronts[u.path]) for u in missing if fronts[u.path] is not None]
        from_wav = [u for u in missing if fronts[u.path] is None]
        if from_front:
            found.update(self._layers_pass(from_front))
        if from_wav:
            found.update((u.path, t) for u, t in self._frozen_pass(from_wav))
        return [found[u.path] for u in utts]

    def _layers_pass(self, items: list[tuple[str, torch.Tensor]]):
        """(path, hidden states [L, F, D]) from stored front ends [1, F, C], in length-sorted batches."""
        lengths = [front.shape[1] for _, front in items]
        for idx in length_sorted_batches(lengths, self.batch_size):
            front, mask = pad_features([items[i][1] for i in idx])
            with torch.no_grad(), autocast_for(self.device):
                hidden, _, _ = self.backbone.forward_from_front_end(front[0].float(), mask.sum(1))
            hidden = hidden.to(self.dtype)
            for j, i in enumerate(idx):
                yield items[i][0], hidden[:, j, : lengths[i]].contiguous()

    def disk_bytes(self) -> int:
        front = self.front_ends.disk_bytes() if self.front_ends else 0
        return super().disk_bytes() + front


class LastLayerFeatures(_StoredFeatures):
    """--finetune unfrozen_last_layer: the frozen lower hidden states and the last layer's input are stored
    ([L-1] + [1] slices), and each batch runs only the (trainable) last layer on them.

    The stored tensors come from the lower layers, which never train, so they hold in every fold; the last
    layer's output is never stored, since its weights change. A batch equals forward()'s hidden states up to
    the fp16 rounding of the stored part."""

    kind = "until_last"

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lower, last_input, n_frames, _ = self.backbone.forward_until_last(wav, lengths)
        return torch.cat([lower, last_input.unsqueeze(0)]), n_frames

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        stored, mask = fetched
        # as LiveFeatures: fp32 while training, autocast (bf16 on CUDA) for evaluation
        with torch.set_grad_enabled(grad), (nullcontext() if grad else autocast_for(self.device)):
            last = self.backbone.run_last_layer(stored[-1].float(), mask)
        return torch.cat([stored[:-1], last.float().unsqueeze(0)]), mask   # fp16 lower states promoted to fp32


GiB = 2 ** 30
_logged_budgets: set[Path] = set()      # cache folders whose budgets this process has logged


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
        disk = in_use + int(0.8 * shutil.disk_usage(_existing(cache_root)).free)
    line = (f"feature cache budgets: {memory / GiB:.1f} GiB of {device.type} memory"
            f"{'' if memory_gb is not None else ' (default; --memory_gb to change)'}, {disk / GiB:.1f} GiB on disk "
            f"under {cache_root}{'' if cache_gb is not None else ' (default; --cache_gb to change)'}")
    if cache_root not in _logged_budgets:
        _logged_budgets.add(cache_root)
        log.info(line)
    return memory, disk
