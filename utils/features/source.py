"""The interface every feature source implements (FeatureSource), what the sources share (the audio, the copy to
the device, read-ahead) and the live source."""
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Protocol

import torch

from model.backbones import MIN_SAMPLES
from utils.core.errors import TrustSerError
from utils.data.audio import TARGET_SR, BadAudioError, load_utterance
from utils.data.utterances import Utterance, pad_waveforms

log = logging.getLogger("trust-ser")


class AudioBank:
    """Cropped 16 kHz waveforms, read once per process; unreadable or too short files raise, or are skipped with
    --skip_bad."""

    def __init__(self, max_seconds: float, skip_bad: bool):
        self.max_seconds, self.skip_bad = max_seconds, skip_bad
        self.wavs: dict[str, torch.Tensor] = {}
        self.bad: dict[str, str] = {}

    def get(self, path: str) -> torch.Tensor | None:
        if path not in self.wavs and path not in self.bad:
            try:
                self.wavs[path] = long_enough(path, load_utterance(path, self.max_seconds))
            except BadAudioError as err:
                if not self.skip_bad:
                    raise TrustSerError(f"{err} (pass --skip_bad to skip such files)") from None
                log.warning(f"skipping: {err}")
                self.bad[path] = str(err)
        return self.wavs.get(path)

    def readable(self, utts: list[Utterance]) -> list[Utterance]:
        """The utterances whose audio is readable, in the order given."""
        return [u for u in utts if self.get(u.path) is not None]

    def device_batch(self, utts: list[Utterance], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The utterances' waveforms zero-padded [B, T] on the device, their lengths [B] on the host."""
        wav, lengths = pad_waveforms([self.get(u.path) for u in utts])
        return to_device(wav, device), lengths


def long_enough(path, clip: torch.Tensor) -> torch.Tensor:
    """The clip, if every backbone's front end can take it (one 25 ms analysis window); BadAudioError if not."""
    if len(clip) < MIN_SAMPLES:
        raise BadAudioError(f"{path}: {len(clip)} samples, shorter than {MIN_SAMPLES * 1000 // TARGET_SR} ms "
                            f"(one analysis window, the shortest clip the backbones take)")
    return clip


class FeatureSource(Protocol):
    """Where the head's input comes from. A batch is made in two steps: `fetch` (what can be read ahead of the
    batch, in a background thread: see prefetched) and `finish` (the part that may train, in the caller's
    thread); `batch` is both."""

    audio: AudioBank

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        """Whatever is done once before batches (computing what is stored); the utterances whose audio is readable."""
        ...

    def length(self, u: Utterance) -> int:
        """The utterance's length, in the unit batches are sorted by (samples or frames)."""
        ...

    def fetch(self, utts: list[Utterance]):
        ...

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input: hidden states [L, B, F, D] (fp32) and the mask [B, F] (True = real frame)."""
        ...

    def batch(self, utts: list[Utterance], grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.finish(self.fetch(utts), grad)

    def cache_report(self) -> str | None:
        """A line on what the source's cache holds, where it has one."""
        return None


def autocast_for(device: torch.device):
    """bf16 autocast for frozen passes on CUDA; plain fp32 on CPU so CPU results are exact."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


@contextmanager
def low_precision(backbone, device: torch.device):
    """autocast_for(device); on CUDA the frozen linear layers compute with their kept bf16 weights
    (Backbone.frozen_linear_weights: the values autocast would cast them to, not cast anew on every call)."""
    if device.type != "cuda":
        yield
        return
    with autocast_for(device), backbone.frozen_linear_weights(torch.bfloat16):
        yield


@contextmanager
def frozen_pass(backbone, device: torch.device):
    """A frozen inference pass: no_grad and low_precision; on CUDA, in the main thread, cuDNN's autotuner is on.
    set_seed (utils/training/loop.py) turns the autotuner off for the process, so that training steps pick the
    same convolution algorithms in every run; a frozen pass's features are computed once and stored, and
    cudnn.deterministic still limits the tuner to deterministic algorithms. The flag is global: only the main
    thread sets and restores it, since the head trains there while the read-ahead thread (prefetched) computes.
    CPU: plain fp32."""
    if device.type != "cuda":
        with torch.no_grad():
            yield
        return
    if threading.current_thread() is not threading.main_thread():
        with torch.no_grad(), low_precision(backbone, device):
            yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with torch.no_grad(), low_precision(backbone, device):
            yield
    finally:
        torch.backends.cudnn.benchmark = before


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to the device; through pinned memory on CUDA (unless it is pinned already), so the copy overlaps
    compute."""
    if device.type != "cuda" or t.is_cuda:
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def prefetched(source: FeatureSource, groups: list[list[Utterance]], grad: bool = False):
    """(utterances, (hidden, mask)) for each group in turn, while a background thread reads the next group
    (disk -> memory -> device, and any frozen features that are computed live). Only the trainable part
    (source.finish) runs in the caller's thread, after the previous step, so results do not change."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(source.fetch, groups[0]) if groups else None
        for i, group in enumerate(groups):
            fetched = pending.result()
            if i + 1 < len(groups):
                pending = pool.submit(source.fetch, groups[i + 1])
            yield group, source.finish(fetched, grad)


class LiveFeatures(FeatureSource):
    """Runs the backbone on every batch (--finetune unfrozen, or --no_cache: the original's per-epoch loop)."""

    def __init__(self, backbone, audio: AudioBank, device: torch.device, round_like_cache: bool, fp32: bool = False):
        self.backbone, self.audio, self.device = backbone, audio, device
        self.round_like_cache = round_like_cache   # frozen --no_cache: same fp16 rounding as the cache
        self.fp32 = fp32                           # evaluate without autocast (Protocol.fp32_live_evaluation)

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        return self.audio.readable(utts)

    def length(self, u: Utterance) -> int:
        return len(self.audio.get(u.path))

    def fetch(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded waveforms on the device, their lengths on the host (what the backbone reads them as)."""
        return self.fetch_waveforms(*self.audio.device_batch(utts, self.device))

    def fetch_waveforms(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What fetch gives for a padded batch of waveforms on the device: the batch itself."""
        return wav, lengths

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        wav, lengths = fetched
        with self._pass(grad):
            hidden, _, mask = self.backbone(wav, lengths)
        if self.round_like_cache:
            hidden = hidden.to(torch.float16)
        return hidden.float(), mask

    def _pass(self, grad: bool):
        """Training: autograd, fp32. Evaluation: no_grad, in fp32 (`fp32`) or as a frozen pass (bf16 on CUDA)."""
        if grad:
            return torch.enable_grad()
        return torch.no_grad() if self.fp32 else frozen_pass(self.backbone, self.device)
