"""What every backbone shares: the Backbone base class (encoding, finetune modes, the split at the last layer),
its registry entry (BackboneSpec) and helpers for masks, weight identities and s3prl checkpoints."""
import argparse
import hashlib
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from utils.core.errors import TrustSerError
from utils.core.io import load_torch

SAMPLE_RATE = 16000
MIN_SAMPLES = 400  # 25 ms: one analysis window, the shortest clip every front end accepts
FINETUNE_MODES = ("frozen", "unfrozen_last_layer", "unfrozen")
RANDOM_SEED = 0


@dataclass(frozen=True)
class BackboneSpec:
    family: str       # wrapper class: apc, tera, wav2vec2, wavlm or whisper
    hub_id: str       # Hugging Face repository, or the s3prl checkpoint URL
    hidden_dim: int   # D of the hidden states
    num_layers: int   # L: hidden states the head sees
    config: dict = field(repr=False)  # the real model's hyperparameters (HF config arguments / s3prl config)
    tiny: dict = field(repr=False)    # same architecture, tiny sizes (tests, --tiny)



class Backbone(nn.Module):
    """Front end -> layers -> stacked hidden states, plus finetune modes and the split at the last layer.

    Families provide the front end (`_embed`), one layer (`_layer`) and what the layers share (`_context`).
    """

    name: str
    hidden_dim: int
    num_layers: int
    weights_id: str
    supports_last_layer_split = True
    hidden_includes_input = False  # TERA: s3prl's hidden states start with the layers' input
    frozen_parts_train = False     # set by utils/training/protocol.py for --protocol original
    front_end_is_deterministic = False   # front_end() has no dropout: its output may be stored in train mode too
    front_end_dim = 0                    # channels of front_end()'s output, where there is one
    padded_batch = False                 # inside padded_batch_features() only
    max_seconds = math.inf               # the longest clip it takes (Whisper: its positional table)

    def __init__(self, name: str, weights_id: str, finetune: str):
        super().__init__()
        self.name = name
        self.weights_id = weights_id
        self.finetune = finetune
        self._low_precision: dict = {}   # (module id, dtype) -> (weight versions, copies): frozen_linear_weights
        self._swap_lock = threading.Lock()
        self._swap_depth, self._swapped = 0, []     # passes inside frozen_linear_weights, what it swapped out

    # -- provided by each family
    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames the backbone gives for clips of these sample counts."""
        raise NotImplementedError

    def _embed(self, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Input of the first layer [B, F, D] and the frame lengths [B]."""
        raise NotImplementedError

    def _layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def _layer(self, index: int, x: torch.Tensor, context):
        raise NotImplementedError

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        """What every layer needs besides its input (attention mask, position bias, lengths)."""
        return mask

    def _after_last_layer(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _layer_drop(self, index: int) -> float:
        return 0.0

    def _last_layer_parts(self) -> list[nn.Module]:
        return [self._layers()[-1]]

    def _never_trained(self) -> list:
        """Modules / parameters frozen (and in eval mode) in every finetune mode."""
        return []

    # -- finetune modes
    def set_finetune(self, mode: str) -> "Backbone":
        """Switch finetune mode (e.g. to "frozen" to probe a fine-tuned backbone)."""
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {mode!r}")
        self.finetune = mode
        self._apply_finetune()
        return self

    def _apply_finetune(self) -> None:
        self.requires_grad_(False)
        if self.finetune == "unfrozen":
            self.requires_grad_(True)
            for part in self._never_trained():
                part.requires_grad_(False)
        elif self.finetune == "unfrozen_last_layer":
            for part in self._last_layer_parts():
                part.requires_grad_(True)
        self.train(False)

    def train(self, mode: bool = True) -> "Backbone":
        """Only the trainable parts follow `mode`; frozen parts stay in eval mode (no dropout, no LayerDrop),
        unless `frozen_parts_train` (--protocol original: its backbone_model.train() reached every part)."""
        if self.frozen_parts_train:
            return super().train(mode)
        super().train(mode and self.finetune == "unfrozen")
        if mode and self.finetune == "unfrozen":
            for part in self._never_trained():
                if isinstance(part, nn.Module):
                    part.train(False)
        if mode and self.finetune == "unfrozen_last_layer":
            for part in self._last_layer_parts():
                part.train(True)
        return self

    @contextmanager
    def padded_batch_features(self):
        """Inside: the features the original's training step made of its zero-padded batch (--protocol original),
        where padding reaches the valid frames, so a clip's features depend on the longest clip of its batch.
        Families that differ say how (`padded_batch`); the default, every clip encoded as if alone, is outside."""
        self.padded_batch = True
        try:
            yield self
        finally:
            self.padded_batch = False

    @contextmanager
    def frozen_linear_weights(self, dtype: torch.dtype):
        """Inside: every frozen nn.Linear computes with `dtype` copies of its weight and bias, made once (again
        when the weights change: a fold's reload), so that a pass under autocast to `dtype` does not cast them
        anew on every call (autocast caches casts of trainable weights only). Only for such passes: there the
        layers compute with exactly these values. Passes in several threads (the read-ahead's and the main one)
        share one swap: the first in makes it, the last out puts the weights back."""
        with self._swap_lock:
            if not self._swap_depth:
                self._swapped = self._swap_in(dtype)
            self._swap_depth += 1
        try:
            yield self
        finally:
            with self._swap_lock:
                self._swap_depth -= 1
                if not self._swap_depth:
                    for module, parameters in self._swapped:
                        module._parameters.update(parameters)

    def _swap_in(self, dtype: torch.dtype) -> list:
        """The frozen linear layers' parameters replaced by their `dtype` copies; returns (module, originals) pairs."""
        swapped = []
        for module in self.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                swapped.append((module, dict(module._parameters)))
                module._parameters.update(self._weight_copies(module, dtype))
        return swapped

    def _weight_copies(self, module: nn.Module, dtype: torch.dtype) -> dict:
        versions = tuple(p._version for p in module._parameters.values() if p is not None)
        key = (id(module), dtype)
        if key not in self._low_precision or self._low_precision[key][0] != versions:
            copies = {name: None if p is None else nn.Parameter(p.detach().to(dtype), requires_grad=False)
                      for name, p in module._parameters.items()}
            self._low_precision[key] = versions, copies
        return self._low_precision[key][1]

    # -- encoding
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """wav [B, T] (16 kHz, zero-padded), lengths [B] -> hidden [L, B, F, D], frame lengths [B], mask [B, F]."""
        hidden, _, frame_lengths, mask = self._encode(wav, lengths, include_last=True)
        return stack_masked(hidden, mask), frame_lengths, mask

    def forward_until_last(self, wav: torch.Tensor, lengths: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward() minus the last layer: hidden [L-1, B, F, D], last layer's input [B, F, D], frame lengths, mask."""
        hidden, x, frame_lengths, mask = self._encode(wav, lengths, include_last=False)
        stacked = stack_masked(hidden, mask) if hidden else x.new_zeros((0, *x.shape))
        return stacked, zero_padding(x, mask), frame_lengths, mask

    def run_last_layer(self, last_input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state [B, F, D] from the last layer's input: forward() == stack(until_last, this)."""
        index = len(self._layers()) - 1
        x = self._run(index, last_input, self._context(last_input, mask))
        return zero_padding(self._after_last_layer(x), mask)

    def forward_from_front_end(self, front: torch.Tensor, frame_lengths: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward() from the front end's padded output [B, F, C] (front_end_is_deterministic backbones only)."""
        hidden, _, frame_lengths, mask = self._encode_embedded(*self._embed_front_end(front, frame_lengths),
                                                               include_last=True)
        return stack_masked(hidden, mask), frame_lengths, mask

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor, include_last: bool):
        return self._encode_embedded(*self._embed(wav, self._sizes(wav, lengths)), include_last)

    def _encode_embedded(self, x: torch.Tensor, frame_lengths: torch.Tensor, include_last: bool):
        mask = frame_mask(frame_lengths, x.shape[1])
        context = self._context(x, mask)
        hidden = [x] if self.hidden_includes_input else []
        count = len(self._layers())
        for index in range(count if include_last else count - 1):
            x = self._run(index, x, context)
            hidden.append(self._after_last_layer(x) if index == count - 1 else x)
        return hidden, x, frame_lengths, mask

    def _run(self, index: int, x: torch.Tensor, context) -> torch.Tensor:
        drop = self._layer_drop(index)
        if self._layers()[index].training and drop > 0 and torch.rand([]) < drop:
            return x  # LayerDrop, as Hugging Face applies it while a layer is being fine-tuned
        return self._layer(index, x, context)

    def _sizes(self, wav: torch.Tensor, lengths: torch.Tensor) -> list[int]:
        if wav.dim() != 2 or lengths.dim() != 1 or lengths.shape[0] != wav.shape[0]:
            raise ValueError(f"expected wav [B, T] and lengths [B], got {tuple(wav.shape)} and {tuple(lengths.shape)}")
        sizes = [int(n) for n in lengths.tolist()]
        if min(sizes) < MIN_SAMPLES or max(sizes) > wav.shape[1]:
            raise TrustSerError(f"{self.name}: clip lengths must lie in [{MIN_SAMPLES}, {wav.shape[1]}] samples "
                                f"(25 ms to the padded width), got {min(sizes)}..{max(sizes)}")
        return sizes


def frame_mask(frame_lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask[..., None], 0.0)


def stack_masked(hidden: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    return torch.stack(hidden).masked_fill_(~mask[None, :, :, None], 0.0)



def file_identity(path: Path) -> str:
    """file:<path>:<bytes>:<newest mtime>, over every file of a model folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [f.stat() for f in files]
    newest = max((int(s.st_mtime) for s in stats), default=0)
    return f"file:{path.resolve()}:{sum(s.st_size for s in stats)}:{newest}"


WEIGHT_SUFFIXES = {".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt"}
FINGERPRINT_BYTES = 1 << 20


def content_fingerprint(path: Path) -> str:
    """16 hex digits over the weights and configuration files of a model folder (its top level, which is what
    from_pretrained reads; or one checkpoint file): each file's name, size, first and last MiB. Other weights
    change them; moving or touching the files does not."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}:".encode())
        with file.open("rb") as f:
            digest.update(f.read(FINGERPRINT_BYTES))
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read())
    return digest.hexdigest()[:16]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE=1, or the hub does not answer one quick request (checked once per process): then only cached
    files are used, so an unreachable hub gives one clear error instead of half a minute of retries."""
    global _HUB_OFFLINE
    if _HUB_OFFLINE is None:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
        _HUB_OFFLINE = constants.HF_HUB_OFFLINE
        if not _HUB_OFFLINE:
            try:
                get_session().head(constants.ENDPOINT, timeout=5)
            except Exception:  # DNS, connection, proxy or timeout errors of the HTTP client
                _HUB_OFFLINE = True
    return _HUB_OFFLINE


_HUB_OFFLINE: bool | None = None


def hub_failure(name: str, source: str, err: Exception) -> str:
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    offline = " (the hub is unreachable or HF_HUB_OFFLINE=1, and no cached copy)" if hub_offline() else ""
    return (f"cannot fetch the {name} weights from {source}{offline} ({type(err).__name__}: {reason}); real "
            f"weights need network access to the hub, or --pretrain_path to a local copy, or --random_init for "
            f"random weights")


class S3prlBackbone(Backbone):
    """APC and TERA: built from an s3prl config and state dict (`_build`), read from an s3prl checkpoint file."""

    @classmethod
    def _build(cls, name: str, config: dict, state: dict | None, weights_id: str, finetune: str,
               path: Path | None = None) -> Backbone:
        raise NotImplementedError

    @classmethod
    def random(cls, name: str, config: dict, weights_id: str, finetune: str) -> Backbone:
        return cls._build(name, config, None, weights_id, finetune)

    @classmethod
    def from_hub(cls, name: str, hub_id: str, weights_id: str, finetune: str) -> Backbone:
        return cls.from_local(name, s3prl_download(name, hub_id), weights_id, finetune)


def read_s3prl_checkpoint(path: Path, name: str) -> dict:
    """weights_only load; s3prl pretraining runs also pickle their argparse arguments, which are allowed."""
    if not path.is_file():
        raise TrustSerError(f"--pretrain_path {path}: {name} needs an s3prl checkpoint file")
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = load_torch(path)
    if not isinstance(checkpoint, dict):
        raise TrustSerError(f"{path} is not an s3prl {name} checkpoint (a dict expected)")
    return checkpoint


def load_weights(module: nn.Module, state: dict, path: Path | None, name: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise TrustSerError(f"{path}: weights do not fit {name} ({detail})") from None


def s3prl_download(name: str, url: str) -> Path:
    """s3prl's cached copy of the checkpoint, downloading it when the hub is reachable (else: cached copy or error)."""
    from s3prl.util.download import _urls_to_filepaths
    offline = hub_offline()
    try:
        path = Path(_urls_to_filepaths(url, download=not offline))
        if not path.is_file():
            raise FileNotFoundError(f"no cached copy at {path}")
        return path
    except Exception as err:  # requests / urllib / filesystem errors
        raise TrustSerError(hub_failure(name, url, err)) from None
