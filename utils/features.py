"""Where the head's input comes from: frozen hidden states computed once (memory + disk cache), or a live backbone."""
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
    """Runs the backbone on every batch (unfrozen fine-tuning, or --no_cache: the original's per-epoch loop)."""

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


class CachedFeatures:
    """Frozen-backbone hidden states, computed once per utterance in length-sorted batches and reused
    across epochs, folds and scripts: in memory (on the device while it fits) and on disk as fp16,
    keyed by backbone weights, audio file (path, size, mtime) and crop length."""

    def __init__(self, backbone, audio: AudioBank, device: torch.device, batch_size: int,
                 cache_root: Path | None, memory_budget_bytes: int):
        self.backbone, self.audio, self.device, self.batch_size = backbone, audio, device, batch_size
        self.cache_root = cache_root
        self.memory_budget = memory_budget_bytes
        self.memory: dict[str, torch.Tensor] = {}
        self.memory_bytes = 0
        self.precision = "bf16" if device.type == "cuda" else "fp32"
        self.stats = {"computed": 0, "from_disk": 0, "from_memory": 0}

    def _key(self, path: str) -> str:
        st = os.stat(path)
        ident = f"{self.backbone.weights_id}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.audio.max_seconds}|{self.precision}"
        return hashlib.sha1(ident.encode()).hexdigest()

    def _disk_path(self, key: str) -> Path:
        return self.cache_root / self.backbone.name / key[:2] / f"{key}.pt"

    def _remember(self, key: str, hidden: torch.Tensor) -> torch.Tensor:
        size = hidden.numel() * hidden.element_size()
        on_device = self.memory_bytes + size <= self.memory_budget
        if on_device or self.cache_root is None:
            hidden = hidden.to(self.device)
            self.memory[key] = hidden
            self.memory_bytes += size
        return hidden

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        """Make sure every utterance has features; returns those whose audio is readable."""
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
                hidden, n_frames, _ = self.backbone(wav.to(self.device), wav_len.to(self.device))
            hidden = hidden.to(torch.float16)
            for i, u in enumerate(batch_utts):
                one = hidden[:, i, : int(n_frames[i])].contiguous()
                key = self._key(u.path)
                if self.cache_root is not None:
                    save_torch(self._disk_path(key), one.cpu())
                self._remember(key, one)
            self.stats["computed"] += len(batch_utts)

    def get(self, u: Utterance) -> torch.Tensor:
        key = self._key(u.path)
        if key in self.memory:
            return self.memory[key]
        return self._remember(key, load_torch(self._disk_path(key)))

    def length(self, u: Utterance) -> int:
        return self.get(u).shape[1]

    def batch(self, utts: list[Utterance], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = pad_features([self.get(u).to(self.device) for u in utts])
        return hidden.float(), mask

    def disk_bytes(self) -> int:
        if self.cache_root is None or not (self.cache_root / self.backbone.name).is_dir():
            return 0
        return sum(p.stat().st_size for p in (self.cache_root / self.backbone.name).rglob("*.pt"))
