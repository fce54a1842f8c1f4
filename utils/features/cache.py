"""The stored feature sources: a frozen backbone's hidden states computed once (CachedFeatures, with the front-end
tier FrontEndFeatures), and the cached input of a trainable last layer (LastLayerFeatures)."""
import hashlib
import os
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from model.backbones.base import frame_mask
from utils.core.progress import progress
from utils.data.utterances import Utterance, length_sorted_batches, pad_features
from utils.features.budget import MemoryBudget, existing_folder, fitting, plan_tiers, size_text
from utils.features.shards import ENTRY_BYTES, SHARD_BYTES, ShardStore
from utils.features.source import AudioBank, FeatureSource, autocast_for, frozen_pass
from utils.features.storage import TieredStore, nbytes
from utils.runs.paths import backbone_dir_name


class StoredFeatures(FeatureSource):
    """What a frozen backbone pass gives per utterance ([L, F, D], as `dtype`), computed once in length-sorted
    batches and reused across epochs, folds and scripts, keyed by what is stored (`kind`), backbone weights,
    audio file (path, size, mtime), crop length and precision. Three tiers, filled in the order utterances are
    prepared (the stage scripts prepare the training split first: it is read most): disk shards up to
    `disk_budget_bytes` for the whole cache, memory (on the device) up to `memory_budget_bytes` (utils/features/
    storage.py), and for what fits in neither, the same frozen pass run live whenever a batch needs it (eval mode,
    no_grad, fp16-rounded, length-sorted within the batch).

    Subclasses say what is stored (`_encode`) and how a batch is made of it (`finish`)."""

    kind: str   # names the disk folder and enters the key, so different stored things never mix
    dtype = torch.float16

    def __init__(self, backbone, audio: AudioBank, device: torch.device, batch_size: int,
                 cache_root: Path | None, memory_budget_bytes: int, disk_budget_bytes: int | None = None,
                 memory: MemoryBudget | None = None):
        self.backbone, self.audio, self.device, self.batch_size = backbone, audio, device, batch_size
        self.cache_root = cache_root
        self.keys: dict[str, str] = {}
        self.frames: dict[str, int] = {}      # key -> frames, for every prepared utterance, stored or live
        self.precision = "bf16" if device.type == "cuda" else "fp32"
        # utterances computed, found on disk (each once), found in memory (per prepare), live (kept nowhere)
        self.stats = {"computed": 0, "from_disk": 0, "from_memory": 0, "live": 0}
        self.live: set[str] = set()
        self.found_on_disk: set[str] = set()
        disk = None
        if cache_root is not None:
            if disk_budget_bytes is None:
                disk_budget_bytes = shutil.disk_usage(existing_folder(cache_root)).free
            # a model folder given by its path is named by its folder name: an absolute path would put the
            # cache inside the user's model folder
            disk = ShardStore(cache_root / backbone_dir_name(backbone.name) / self.kind, cache_root,
                              disk_budget_bytes)
        self.store = TieredStore(device, memory or MemoryBudget(memory_budget_bytes), disk)

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored tensors [L, B, F, D] and frame lengths [B] of a padded batch."""
        raise NotImplementedError

    def key(self, path: str) -> str:
        """Cache key of the file as it is now (weights, path, size, mtime, crop, precision); kept per process."""
        st = os.stat(path)
        ident = (f"{self.kind}|{self.backbone.weights_id}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
                 f"|{self.audio.max_seconds:g}|{self.precision}")
        if self.dtype != torch.float16:       # fp16, the first stored type, is left out: older caches stay valid
            ident += f"|{self.dtype}"
        self.keys[path] = hashlib.sha1(ident.encode()).hexdigest()
        return self.keys[path]

    def _known_key(self, path: str) -> str:
        return self.keys.get(path) or self.key(path)

    def front_end_features(self) -> "FrontEndFeatures | None":
        """The backbone's front-end tier within this cache's budgets (deterministic front ends only)."""
        return self._front_end_tier()

    def _front_end_tier(self, dtype: torch.dtype | None = None) -> "FrontEndFeatures | None":
        """A FrontEndFeatures sharing this cache's memory budget and disk budget (None: the front end is not
        deterministic)."""
        if not self.backbone.front_end_is_deterministic:
            return None
        disk = self.store.disk
        return FrontEndFeatures(self.backbone, self.audio, self.device, self.batch_size, self.cache_root,
                                self.store.pool.budget, disk.budget if disk else None, memory=self.store.pool,
                                dtype=dtype)

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        """Make sure every utterance is stored, or known to be computed live; returns those whose audio is
        readable. One process at a time fills a cache folder; the next finds the work done."""
        with self.store.filling():
            self.store.refresh()
            missing = []
            for u in utts:
                if u.path in self.audio.bad:
                    continue
                if not os.path.isfile(u.path):
                    self.audio.get(u.path)      # raises, or records it as bad with --skip_bad
                    continue
                key = self.key(u.path)
                if key in self.store.memory:
                    self.stats["from_memory"] += 1
                elif key in self.store:
                    if key not in self.found_on_disk:
                        self.found_on_disk.add(key)
                        self.stats["from_disk"] += 1
                    self.frames[key] = self.store.frames(key)
                elif key not in self.live:
                    missing.append(u)
            self._compute(missing)
        return [u for u in utts if u.path not in self.audio.bad]

    def fetch_waveforms(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What fetch gives for a padded batch of waveforms on the device (lengths on the host): the frozen pass,
        rounded to the stored type, [L, B, F, D], and the mask [B, F]."""
        with frozen_pass(self.backbone, self.device):
            stored, n_frames = self._encode(wav, lengths)
        return stored.to(self.dtype), frame_mask(n_frames, stored.shape[2])

    def _waveform_batches(self, utts: list[Utterance]):
        """(utterances, padded waveforms on the device, their frame counts) in length-sorted batches. Frame counts
        come from the lengths on the host, so cutting a batch into utterances waits for nothing on the device."""
        lengths = [len(self.audio.get(u.path)) for u in utts]
        for idx in length_sorted_batches(lengths, self.batch_size):
            batch_utts = [utts[i] for i in idx]
            wav, wav_len = self.audio.device_batch(batch_utts, self.device)
            yield batch_utts, wav, wav_len, self.backbone.frame_lengths(wav_len).tolist()

    def _frozen_pass(self, utts: list[Utterance]):
        """(utterance, stored tensor [L, F, D]) for each utterance, in length-sorted batches."""
        for batch_utts, wav, wav_len, frames in self._waveform_batches(utts):
            stored, _ = self.fetch_waveforms(wav, wav_len)
            for u, n, one in zip(batch_utts, frames, stored.unbind(1)):
                yield u, one[:, :n].contiguous()

    def _readable(self, utts: list[Utterance]) -> list[Utterance]:
        """The utterances whose audio is readable, each path once, in the order given."""
        return list({u.path: u for u in self.audio.readable(utts)}.values())

    def _compute(self, utts: list[Utterance]) -> None:
        """The frozen pass over utterances not stored yet: disk shards, then memory, for those that fit the room
        left, in the order given (the training split first); the rest run live, and are not computed now."""
        unique = self._readable(utts)
        frames = self._record_frames(unique)
        kept = fitting(self.store.room(), [n * self._bytes_per_frame() + ENTRY_BYTES for n in frames])
        for u in unique[kept:]:
            self._run_live(self.keys[u.path])
        unique = unique[:kept]
        if not unique:
            return
        self.backbone.eval()
        pending, pending_bytes = [], 0
        desc = f"{self.backbone.name} {self.kind} features"
        for u, one in progress(self._frozen_pass(unique), total=len(unique), desc=desc):
            self.stats["computed"] += 1
            pending.append((self.keys[u.path], one))    # on the device: the disk write copies it, memory keeps it
            pending_bytes += nbytes(one)
            if pending_bytes >= SHARD_BYTES:
                self._keep(pending)
                pending, pending_bytes = [], 0
        self._keep(pending)

    def _keep(self, pending: list[tuple[str, torch.Tensor]]) -> None:
        for key in self.store.keep(pending):
            self._run_live(key)

    def _record_frames(self, utts: list[Utterance]) -> list[int]:
        """The frames the backbone gives each utterance (what its stored tensor or live pass will have), kept."""
        frames = self.backbone.frame_lengths(torch.tensor([len(self.audio.get(u.path)) for u in utts])).tolist()
        self.frames.update((self.keys[u.path], n) for u, n in zip(utts, frames))
        return frames

    def _bytes_per_frame(self) -> int:
        """What one frame of a stored tensor takes ([L, F, D]: L hidden states of D values)."""
        return self.backbone.num_layers * self.backbone.hidden_dim * self.dtype.itemsize

    def _run_live(self, key: str) -> None:
        self.live.add(key)
        self.stats["live"] = len(self.live)

    def get(self, u: Utterance) -> torch.Tensor:
        return self.fetch_stored([u])[0]

    def fetch_stored(self, utts: list[Utterance]) -> list[torch.Tensor]:
        """Each utterance's stored tensor on the device; what is not stored runs through the frozen pass now."""
        found = [self.store.get(self._known_key(u.path)) for u in utts]
        live = [u for u, f in zip(utts, found) if f is None]
        computed = dict(self._frozen_pass(live)) if live else {}
        return [f if f is not None else computed[u] for u, f in zip(utts, found)]

    def length(self, u: Utterance) -> int:
        key = self._known_key(u.path)
        return self.frames[key] if key in self.frames else self.get(u).shape[1]

    def fetch(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored fp16 tensors of a batch, zero-padded to [L, B, F, D], and the mask [B, F]."""
        return pad_features(self.fetch_stored(utts))

    def disk_bytes(self) -> int:
        return self.store.disk_bytes()

    def cache_report(self) -> str | None:
        if self.cache_root is None:       # keeps nothing (--no_cache): every batch is computed anew
            return None
        stats = self.stats
        from_front_ends = (f" ({stats['live_from_front_end']} of them from stored front ends)"
                           if stats.get("live_from_front_end") else "")
        return (f"feature cache: {stats['computed']} utterances computed, {stats['from_disk']} read from disk, "
                f"{stats['live']} run live on every batch{from_front_ends}; {size_text(self.disk_bytes())} on disk "
                f"under {self.cache_root}")


class FrontEndFeatures(StoredFeatures):
    """The output of a backbone's deterministic front end (wav2vec 2.0 / WavLM / HuBERT / data2vec: the CNN
    encoder, which has no dropout and never trains), [1, F, C], stored as the hidden states are: the same in train
    and eval mode, so a batch needs only run the rest of the backbone. Stored in the type the frozen pass gives
    it in: bf16 under CUDA's autocast (the base models' CNN ends in a bf16 convolution and GELU, so fp32 would
    double the bytes and add no precision; a layer-norm CNN, in large models, ends in fp32 there, and its bf16
    rounding is about that of the bf16 projection after it), fp32 on CPU, so that what is computed from it there
    equals the unbounded cache as closely as a live pass does (README, "Speed")."""

    kind = "front_end"

    def __init__(self, *args, dtype: torch.dtype | None = None, **kwargs):
        """As StoredFeatures; `dtype` overrides the stored type (tests: bf16 on CPU)."""
        super().__init__(*args, **kwargs)
        self.dtype = dtype or (torch.bfloat16 if self.precision == "bf16" else torch.float32)   # bf16 on CUDA

    def front_end_features(self) -> "FrontEndFeatures":
        return self

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
        return self.store.frames(self._known_key(path))


class CachedFeatures(StoredFeatures):
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
        self.front_ends = self._front_end_tier(front_end_dtype)
        if self.front_ends:
            self.stats["live_from_front_end"] = 0   # of the live ones, those that start from a stored front end
        self.from_front_end: set[str] = set()

    def front_end_features(self) -> FrontEndFeatures | None:
        return self.front_ends

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, n_frames, _ = self.backbone(wav, lengths)
        return hidden, n_frames

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = fetched
        return hidden.float(), mask

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        if not self.front_ends:
            return super().prepare(utts)
        with self.front_ends.store.filling():
            self.front_ends.store.refresh()
            return super().prepare(utts)

    def _compute(self, utts: list[Utterance]) -> None:
        if not self.front_ends:
            return super()._compute(utts)
        unique = self._readable(utts)
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
        front_per_frame, hidden_per_frame = self.front_ends._bytes_per_frame(), self._bytes_per_frame()
        # every entry counts ENTRY_BYTES for its shard index, also in memory, where it takes none
        kept, as_hidden = plan_tiers(self.store.room(), [n * front_per_frame + ENTRY_BYTES for n in frames],
                                     [n * (hidden_per_frame - front_per_frame) for n in frames])
        for u in todo[kept:]:           # room for neither: the whole backbone runs live, nothing is computed now
            self._run_live(self.keys[u.path])
        if kept:
            self._compute_tiers(todo[:kept], {u.path for u, h in zip(todo, as_hidden) if h})

    def _compute_tiers(self, utts: list[Utterance], hidden_kept: set[str]) -> None:
        """One pass (front end, then the layers from it) over utts: hidden states for `hidden_kept`, front ends
        for the others (and for hidden states that turn out not to fit), stored as far as the budgets go (the plan
        leaves room to spare; only where the disk's and memory's rests are each too small for an utterance that
        fits their sum does one run whole)."""
        self.backbone.eval()
        hidden_items, front_items, pending_bytes = [], [], 0
        desc = f"{self.backbone.name} {self.kind} features (+ {FrontEndFeatures.kind})"
        for u, front, hidden in progress(self._two_tier_pass(utts), total=len(utts), desc=desc):
            key, front_key = self.keys[u.path], self.front_ends.key(u.path)
            self.stats["computed"] += 1
            if u.path in hidden_kept:
                hidden_items.append((key, hidden, front_key, front))
                pending_bytes += nbytes(hidden)
            else:
                front_items.append((key, front_key, front))
                pending_bytes += nbytes(front)
            if pending_bytes >= SHARD_BYTES:
                self._keep_tiers(hidden_items, front_items)
                hidden_items, front_items, pending_bytes = [], [], 0
        self._keep_tiers(hidden_items, front_items)

    def _two_tier_pass(self, utts: list[Utterance]):
        """(utterance, front end [1, F, C], hidden states [L, F, D]) in length-sorted batches; the layers run
        from the front end, as forward() does."""
        for batch_utts, wav, wav_len, frames in self._waveform_batches(utts):
            with frozen_pass(self.backbone, self.device):
                front, n_frames = self.backbone.front_end(wav, wav_len)
                hidden, _, _ = self.backbone.forward_from_front_end(front, n_frames)
            front, hidden = front.to(self.front_ends.dtype), hidden.to(self.dtype)
            for i, (u, n) in enumerate(zip(batch_utts, frames)):
                yield u, front[i, :n].unsqueeze(0).contiguous(), hidden[:, i, :n].contiguous()

    def _keep_tiers(self, hidden_items: list, front_items: list) -> None:
        lost = self.store.keep([(k, h) for k, h, _, _ in hidden_items])
        front_items += [(key, front_key, front) for key, _, front_key, front in hidden_items if key in lost]
        lost = self.front_ends.store.keep([(k, f) for _, k, f in front_items])
        for key, front_key, _ in front_items:
            self._run_live(key, from_front_end=front_key not in lost)

    def _run_live(self, key: str, from_front_end: bool = False) -> None:
        super()._run_live(key)
        if from_front_end:
            self.from_front_end.add(key)
            self.stats["live_from_front_end"] = len(self.from_front_end)

    def fetch(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """As StoredFeatures.fetch. A batch that has only front ends stored (a bounded cache's training batch) is
        written from the layers' padded outputs (their padding is zero: Backbone.forward_from_front_end), one
        indexed write per length-sorted batch of the layers, rather than cut into utterances and padded again: the
        same tensor, without the two copies."""
        if not self._only_front_ends_stored(utts):
            return super().fetch(utts)
        fronts = [self.front_ends.store.get(self.front_ends._known_key(u.path)) for u in utts]
        if any(front is None for front in fronts):     # a damaged shard: fetch_stored computes those from the audio
            return super().fetch(utts)
        lengths = torch.tensor([front.shape[1] for front in fronts])
        width = int(lengths.max())
        hidden = torch.zeros(self.backbone.num_layers, len(utts), width, self.backbone.hidden_dim, dtype=self.dtype,
                             device=self.device)
        for order, layers_out, _ in self._layers_batches(fronts):
            hidden[:, torch.tensor(order).to(self.device), :layers_out.shape[2]] = layers_out
        return hidden, (torch.arange(width)[None, :] < lengths[:, None]).to(self.device)

    def _only_front_ends_stored(self, utts: list[Utterance]) -> bool:
        """Whether every utterance has its front end stored and none its hidden states (nothing is read)."""
        return bool(self.front_ends) and all(
            self._known_key(u.path) not in self.store and self.front_ends._known_key(u.path) in self.front_ends.store
            for u in utts)

    def fetch_stored(self, utts: list[Utterance]) -> list[torch.Tensor]:
        """As StoredFeatures.fetch_stored; what has only a front end stored runs the layers from it."""
        if not self.front_ends:
            return super().fetch_stored(utts)
        found = {u.path: self.store.get(self._known_key(u.path)) for u in utts}
        missing = [u for u in utts if found[u.path] is None]
        fronts = {u.path: self.front_ends.store.get(self.front_ends._known_key(u.path)) for u in missing}
        from_front = [(u.path, fronts[u.path]) for u in missing if fronts[u.path] is not None]
        from_wav = [u for u in missing if fronts[u.path] is None]
        if from_front:
            paths, stored = zip(*from_front)
            for order, hidden, _ in self._layers_batches(list(stored)):
                for j, i in enumerate(order):     # views: fetch's padding copies them into the batch, once
                    found[paths[i]] = hidden[:, j, : stored[i].shape[1]]
        if from_wav:
            found.update((u.path, t) for u, t in self._frozen_pass(from_wav))
        return [found[u.path] for u in utts]

    def _layers_batches(self, fronts: list[torch.Tensor]):
        """(indices into fronts, hidden states [L, b, F, D] in the stored type, mask [b, F]) of stored front ends
        [1, F, C], in length-sorted padded batches."""
        for order in length_sorted_batches([front.shape[1] for front in fronts], self.batch_size):
            front, mask = pad_features([fronts[i] for i in order])
            with frozen_pass(self.backbone, self.device):
                hidden, _, _ = self.backbone.forward_from_front_end(front[0].float(), mask.sum(1))
            yield order, hidden.to(self.dtype), mask

    def disk_bytes(self) -> int:
        front = self.front_ends.disk_bytes() if self.front_ends else 0
        return super().disk_bytes() + front


class LastLayerFeatures(StoredFeatures):
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
