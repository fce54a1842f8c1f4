"""Where the head's input comes from: frozen hidden states computed once (memory + disk cache), the cached input
of a trainable last layer, or a live backbone."""
import hashlib
import logging
import os
from contextlib import nullcontext
from pathlib import Path

import torch

from utils.audio import BadAudioError, load_utterance
from utils.data import Utterance, length_sorted_batches, pad_features, pad_waveforms
from utils.errors import TrustSerError
from utils.io import load_torch, save_torch

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

    def batch(self, utts: list[Utterance], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        wav, lengths = pad_waveforms([self.audio.get(u.path) for u in utts])
        with torch.set_grad_enabled(grad), (nullcontext() if grad else autocast_for(self.device)):
            hidden, _, mask = self.backbone(wav.to(self.device), lengths.to(self.device))
        if self.round_like_cache:
            hidden = hidden.to(torch.float16)
        return hidden.float(), mask


class _StoredFeatures:
    """What a frozen backbone pass gives per utterance, computed once in length-sorted batches and reused
    across epochs, folds and scripts: in memory (on the device while it fits) and on disk as fp16, keyed by
    what is stored (`kind`), backbone weights, audio file (path, size, mtime), crop length and precision.

    Subclasses say what is stored ([L, F, D] per utterance, from `_encode`) and how a batch is made of it."""

    kind: str   # names the disk folder and enters the key, so different stored things never mix

    def __init__(self, backbone, audio: AudioBank, device: torch.device, batch_size: int,
                 cache_root: Path | None, memory_budget_bytes: int):
        self.backbone, self.audio, self.device, self.batch_size = backbone, audio, device, batch_size
        self.cache_root = cache_root
        self.memory_budget = memory_budget_bytes
        self.memory: dict[str, torch.Tensor] = {}
        self.keys: dict[str, str] = {}
        self.memory_bytes = 0
        self.precision = "bf16" if device.type == "cuda" else "fp32"
        self.stats = {"computed": 0, "from_disk": 0, "from_memory": 0}

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored tensors [L, B, F, D] and frame lengths [B] of a padded batch."""
        raise NotImplementedError

    def _key(self, path: str) -> str:
        """Cache key of the file as it is now (weights, path, size, mtime, crop, precision); kept per process."""
        st = os.stat(path)
        ident = (f"{self.kind}|{self.backbone.weights_id}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
                 f"|{self.audio.max_seconds}|{self.precision}")
        self.keys[path] = hashlib.sha1(ident.encode()).hexdigest()
        return self.keys[path]

    def _folder(self) -> Path:
        return self.cache_root / self.backbone.name / self.kind

    def _disk_path(self, key: str) -> Path:
        return self._folder() / key[:2] / f"{key}.pt"

    def _remember(self, key: str, stored: torch.Tensor) -> torch.Tensor:
        size = stored.numel() * stored.element_size()
        on_device = self.memory_bytes + size <= self.memory_budget
        if on_device or self.cache_root is None:
            stored = stored.to(self.device)
            self.memory[key] = stored
            self.memory_bytes += size
        return stored

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        """Make sure every utterance has its stored tensors; returns those whose audio is readable."""
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
            elif self.cache_root is not None and self._disk_path(key).is_file():
                self.stats["from_disk"] += 1
            else:
                missing.append(u)
        self._compute(missing)
        return [u for u in utts if u.path not in self.audio.bad]

    def _compute(self, utts: list[Utterance]) -> None:
        unique = list({u.path: u for u in utts if self.audio.get(u.path) is not None}.values())
        lengths = [len(self.audio.get(u.path)) for u in unique]
        self.backbone.eval()
        for idx in length_sorted_batches(lengths, self.batch_size):
            batch_utts = [unique[i] for i in idx]
            wav, wav_len = pad_waveforms([self.audio.get(u.path) for u in batch_utts])
            with torch.no_grad(), autocast_for(self.device):
                stored, n_frames = self._encode(wav.to(self.device), wav_len.to(self.device))
            stored = stored.to(torch.float16)
            for i, u in enumerate(batch_utts):
                one = stored[:, i, : int(n_frames[i])].contiguous()
                key = self._key(u.path)
                if self.cache_root is not None:
                    save_torch(self._disk_path(key), one.cpu())
                self._remember(key, one)
            self.stats["computed"] += len(batch_utts)

    def get(self, u: Utterance) -> torch.Tensor:
        key = self.keys.get(u.path) or self._key(u.path)
        if key in self.memory:
            return self.memory[key]
        try:
            return self._remember(key, load_torch(self._disk_path(key)))
        except TrustSerError as err:          # a damaged cache entry is recomputed, not fatal
            log.warning(f"recomputing damaged cache entry: {err}")
            self._disk_path(key).unlink(missing_ok=True)
            self._compute([u])
            return self.memory[key] if key in self.memory else load_torch(self._disk_path(key))

    def length(self, u: Utterance) -> int:
        return self.get(u).shape[1]

    def _padded(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored fp16 tensors of a batch, zero-padded to [L, B, F, D], and the mask [B, F]."""
        return pad_features([self.get(u).to(self.device) for u in utts])

    def disk_bytes(self) -> int:
        if self.cache_root is None or not self._folder().is_dir():
            return 0
        return sum(p.stat().st_size for p in self._folder().rglob("*.pt"))


class CachedFeatures(_StoredFeatures):
    """A frozen backbone's hidden states [L, F, D], stored; batches are just padded."""

    kind = "hidden"

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, n_frames, _ = self.backbone(wav, lengths)
        return hidden, n_frames

    def batch(self, utts: list[Utterance], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = self._padded(utts)
        return hidden.float(), mask


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

    def batch(self, utts: list[Utterance], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        stored, mask = self._padded(utts)
        # as LiveFeatures: fp32 while training, autocast (bf16 on CUDA) for evaluation
        with torch.set_grad_enabled(grad), (nullcontext() if grad else autocast_for(self.device)):
            last = self.backbone.run_last_layer(stored[-1].float(), mask)
        return torch.cat([stored[:-1], last.float().unsqueeze(0)]), mask   # fp16 lower states promoted to fp32
