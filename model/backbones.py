"""Pretrained speech backbones (`--pretrain_model`): one registry, one wrapper class per family.

Every backbone maps a zero-padded 16 kHz batch to the hidden states of all its layers, [L, B, F, D], in the
original's layout: WavLM / wav2vec 2.0 / Whisper give their transformer layers' outputs (the embedding output is
dropped; Whisper's last one is after the encoder's final layer norm, as Hugging Face reports it), APC / TERA give
s3prl's `hidden_states` (TERA's start with its input embedding).

Padding never changes a clip's hidden states: each clip's front end (log-mel, fbank, or the CNN encoder whose
GroupNorm normalises over time) runs on the clip alone, and the layers mask padded frames as keys. Padded frames
of the returned hidden states are zero.

Heavy libraries (transformers, s3prl) are imported on first use so that `--help` stays fast.
"""
import argparse
import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from model.whisper_frontend import WhisperLogMel, num_mel_frames
from utils.errors import TrustSerError
from utils.io import load_torch, read_json

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


_CNN_ENCODER = dict(conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                    conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
                    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
_BASE_TRANSFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         layer_norm_eps=1e-5, hidden_dropout=0.1, attention_dropout=0.1, feat_proj_dropout=0.1,
                         mask_time_prob=0.05)
_TINY_SSL = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                 conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False, num_conv_pos_embeddings=16,
                 num_conv_pos_embedding_groups=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64)

WAV2VEC2_BASE_960H = {**_CNN_ENCODER, **_BASE_TRANSFORMER, "activation_dropout": 0.1, "layerdrop": 0.1, "vocab_size": 32}
WAVLM_BASE_PLUS = {**_CNN_ENCODER, **_BASE_TRANSFORMER, "activation_dropout": 0.0, "layerdrop": 0.05,
                   "num_buckets": 320, "max_bucket_distance": 800}


def _whisper(d_model: int, layers: int, heads: int) -> dict:
    return dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
                num_mel_bins=80, max_source_positions=1500)


_TINY_WHISPER = {**_whisper(32, 2, 2), "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 64}

# s3prl's pretraining configs (pretrain/apc/config_model.yaml; tera logMelBase-T-F-M with the "drop1" dropout).
_APC_AUDIO = {"feat_type": "fbank", "feat_dim": 80, "frame_length": 25, "frame_shift": 10, "decode_wav": False}
APC_360HR = {"model": {"paras": {"num_layers": 3, "hidden_size": 512, "dropout": 0.1, "residual": True}},
             "data": {"audio": _APC_AUDIO}}
_TERA_FEATURE = {"feat_type": "mel", "log": True, "delta": 0, "cmvn": True}
_TERA_AUDIO = {"target_level": -25, "win_ms": 25, "hop_ms": 10, "n_freq": 201, "n_mels": 80, "n_mfcc": 13,
               "input": {**_TERA_FEATURE, "channel": 0}, "target": {**_TERA_FEATURE, "channel": 1}}


def _tera(hidden: int, layers: int, heads: int) -> dict:
    transformer = {"input_dim": -1, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                   "intermediate_size": 4 * hidden, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                   "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
                   "share_layer": False, "pre_layer_norm": False}
    return {"transformer": transformer, "task": {"sequence_length": 1500}, "audio": _TERA_AUDIO}


_APC_URL = "https://huggingface.co/leo19941227/apc_series/resolve/main/apc_360hr.ckpt"
_TERA_URL = ("https://huggingface.co/s3prl/tera/resolve/main/"
             "tera_logMelBase_T_F_M_AdamW_b32_1m_960hr_drop1/states-1000000.ckpt")
_TINY_APC = {"model": {"paras": {"num_layers": 3, "hidden_size": 32, "dropout": 0.1, "residual": True}},
             "data": {"audio": _APC_AUDIO}}

BACKBONES: dict[str, BackboneSpec] = {
    "apc": BackboneSpec("apc", _APC_URL, 512, 3, APC_360HR, _TINY_APC),
    "tera": BackboneSpec("tera", _TERA_URL, 768, 4, _tera(768, 3, 12), _tera(32, 2, 2)),
    "wavlm": BackboneSpec("wavlm", "microsoft/wavlm-base-plus", 768, 12, WAVLM_BASE_PLUS,
                          {**_TINY_SSL, "num_buckets": 32, "max_bucket_distance": 64, "layerdrop": 0.05}),
    "wav2vec2_0": BackboneSpec("wav2vec2", "facebook/wav2vec2-base-960h", 768, 12, WAV2VEC2_BASE_960H,
                               {**_TINY_SSL, "layerdrop": 0.1}),
    "whisper_tiny": BackboneSpec("whisper", "openai/whisper-tiny", 384, 4, _whisper(384, 4, 6), _TINY_WHISPER),
    "whisper_base": BackboneSpec("whisper", "openai/whisper-base", 512, 6, _whisper(512, 6, 8), _TINY_WHISPER),
    "whisper_small": BackboneSpec("whisper", "openai/whisper-small", 768, 12, _whisper(768, 12, 12), _TINY_WHISPER),
}


def build_backbone(name: str, *, pretrain_path: str | None = None, random_init: bool = False,
                   tiny: bool = False, finetune: str = "frozen") -> "Backbone":
    """The backbone `name` with hub weights (default), a local copy (`pretrain_path`) or seeded random weights."""
    if name not in BACKBONES:
        raise TrustSerError(f"unknown --pretrain_model '{name}'; choose one of: {', '.join(BACKBONES)}")
    if finetune not in FINETUNE_MODES:
        raise TrustSerError(f"unknown --finetune '{finetune}'; choose one of: {', '.join(FINETUNE_MODES)}")
    if random_init and pretrain_path:
        raise TrustSerError("--random_init and --pretrain_path exclude each other: pick one source of weights")
    if tiny and not (random_init or pretrain_path):
        raise TrustSerError("--tiny needs --random_init (or a --pretrain_path holding a tiny model)")
    spec = BACKBONES[name]
    family = _FAMILIES[spec.family]
    config = spec.tiny if tiny else spec.config
    if random_init:
        weights_id = f"random:{name}:{'tiny' if tiny else 'full'}:seed{RANDOM_SEED}"
        with torch.random.fork_rng(devices=[]):  # every script rebuilds the same weights, caller's RNG untouched
            torch.manual_seed(RANDOM_SEED)
            return family.random(name, config, weights_id, finetune)
    if pretrain_path:
        path = Path(pretrain_path)
        if not path.exists():
            raise TrustSerError(f"--pretrain_path {path} does not exist")
        backbone = family.from_local(name, path, _file_identity(path), finetune)
    else:
        backbone = family.from_hub(name, spec.hub_id, f"hub:{spec.hub_id}", finetune)
    expected = family.dims(config)
    if (backbone.hidden_dim, backbone.num_layers) != expected:
        source = pretrain_path or spec.hub_id
        raise TrustSerError(f"{source} gives {backbone.num_layers} hidden states of size {backbone.hidden_dim}; "
                            f"{name}{' (tiny)' if tiny else ''} gives {expected[1]} of size {expected[0]}")
    return backbone


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
    frozen_parts_train = False     # set by utils/protocol.py for --protocol original
    front_end_is_deterministic = False   # front_end() has no dropout: its output may be stored in train mode too

    def __init__(self, name: str, weights_id: str, finetune: str):
        super().__init__()
        self.name = name
        self.weights_id = weights_id
        self.finetune = finetune

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

    # -- encoding
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """wav [B, T] (16 kHz, zero-padded), lengths [B] -> hidden [L, B, F, D], frame lengths [B], mask [B, F]."""
        hidden, _, frame_lengths, mask = self._encode(wav, lengths, include_last=True)
        return _stack_masked(hidden, mask), frame_lengths, mask

    def forward_until_last(self, wav: torch.Tensor, lengths: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward() minus the last layer: hidden [L-1, B, F, D], last layer's input [B, F, D], frame lengths, mask."""
        hidden, x, frame_lengths, mask = self._encode(wav, lengths, include_last=False)
        stacked = _stack_masked(hidden, mask) if hidden else x.new_zeros((0, *x.shape))
        return stacked, _zero_padding(x, mask), frame_lengths, mask

    def run_last_layer(self, last_input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state [B, F, D] from the last layer's input: forward() == stack(until_last, this)."""
        index = len(self._layers()) - 1
        x = self._run(index, last_input, self._context(last_input, mask))
        return _zero_padding(self._after_last_layer(x), mask)

    def forward_from_front_end(self, front: torch.Tensor, frame_lengths: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward() from the front end's padded output [B, F, C] (front_end_is_deterministic backbones only)."""
        hidden, _, frame_lengths, mask = self._encode_embedded(*self._embed_front_end(front, frame_lengths),
                                                               include_last=True)
        return _stack_masked(hidden, mask), frame_lengths, mask

    def _encode(self, wav: torch.Tensor, lengths: torch.Tensor, include_last: bool):
        return self._encode_embedded(*self._embed(wav, self._sizes(wav, lengths)), include_last)

    def _encode_embedded(self, x: torch.Tensor, frame_lengths: torch.Tensor, include_last: bool):
        mask = _frame_mask(frame_lengths, x.shape[1])
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


class Wav2Vec2StyleBackbone(Backbone):
    """wav2vec 2.0 and WavLM (Hugging Face): CNN encoder per clip, then the transformer layers with a padding mask."""

    front_end_is_deterministic = True    # the CNN encoder: no dropout, GroupNorm over each clip

    def __init__(self, name: str, model: nn.Module, weights_id: str, finetune: str):
        super().__init__(name, weights_id, finetune)
        self.model = model
        self.is_wavlm = model.config.model_type == "wavlm"
        self.hidden_dim = model.config.hidden_size
        self.num_layers = model.config.num_hidden_layers
        self._apply_finetune()

    @staticmethod
    def dims(config: dict) -> tuple[int, int]:
        return config["hidden_size"], config["num_hidden_layers"]

    @classmethod
    def random(cls, name: str, config: dict, weights_id: str, finetune: str) -> Backbone:
        config_class, model_class = _hf_classes(BACKBONES[name].family)
        return cls(name, model_class(config_class(**config)), weights_id, finetune)

    @classmethod
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        _check_hf_folder(path, name)
        return cls(name, _hf_load(name, str(path), local=True), weights_id, finetune)

    @classmethod
    def from_hub(cls, name: str, hub_id: str, weights_id: str, finetune: str) -> Backbone:
        return cls(name, _hf_load(name, hub_id, local=False), weights_id, finetune)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(num_samples).long()

    def _cnn_features(self, wav: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """The CNN on the padded batch, each clip cropped to its own frames.

        Base models put a GroupNorm (per channel, over time) after the first conv: its statistics are taken over
        each clip's valid frames only, so padding changes nothing. Every later conv output frame reads only
        input frames of its own clip, hence the valid frames equal those of the clip encoded alone.
        """
        layers = self.model.feature_extractor.conv_layers
        x = wav[:, None, : max(sizes)]
        first = layers[0]
        if isinstance(getattr(first, "layer_norm", None), nn.GroupNorm):
            x = first.conv(x)
            x = first.activation(_masked_group_norm(x, first.layer_norm, _conv_lengths(sizes, first.conv)))
        else:
            x = first(x)
        for layer in layers[1:]:
            x = layer(x)
        frames = self.frame_lengths(torch.tensor(sizes)).tolist()
        return [x[i, :, :n].transpose(0, 1) for i, n in enumerate(frames)]

    def front_end(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The CNN encoder's output [B, F, 512], zero-padded, and the frame lengths [B]."""
        features = self._cnn_features(wav, self._sizes(wav, lengths))
        return pad_sequence(features, batch_first=True), torch.tensor([len(f) for f in features], device=wav.device)

    def _embed(self, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        features = self._cnn_features(wav, sizes)
        frame_lengths = torch.tensor([len(f) for f in features], device=wav.device)
        return self._embed_front_end(pad_sequence(features, batch_first=True), frame_lengths)

    def _embed_front_end(self, front: torch.Tensor, frame_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.model.feature_projection(front)
        x = x.masked_fill(~_frame_mask(frame_lengths, x.shape[1])[..., None], 0.0)  # as HF, before the conv position
        encoder = self.model.encoder
        x = x + _outside_autocast(encoder.pos_conv_embed, x)
        return encoder.dropout(encoder.layer_norm(x)), frame_lengths

    def _layers(self) -> nn.ModuleList:
        return self.model.encoder.layers

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        if self.is_wavlm:  # relative position bias: made by layer 0, shared by all layers (depends on F only)
            batch, frames = mask.shape
            bias = self.model.encoder.layers[0].attention.compute_bias(frames, frames)
            return mask.long(), bias.unsqueeze(0).expand(batch, -1, -1, -1).reshape(-1, frames, frames)
        from transformers.masking_utils import create_bidirectional_mask
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=x, attention_mask=mask)

    def _layer(self, index: int, x: torch.Tensor, context) -> torch.Tensor:
        layer = self.model.encoder.layers[index]
        if self.is_wavlm:
            mask, bias = context
            return layer(x, attention_mask=mask, position_bias=bias, index=index)[0]
        return layer(x, attention_mask=context)

    def _layer_drop(self, index: int) -> float:
        return 0.0 if self.is_wavlm and index == 0 else self.model.config.layerdrop

    def _never_trained(self) -> list:
        """The CNN encoder stays frozen, as HF's freeze_feature_encoder(); SpecAugment's mask vector is unused."""
        parts = [self.model.feature_extractor]
        if getattr(self.model, "masked_spec_embed", None) is not None:
            parts.append(self.model.masked_spec_embed)
        return parts


class WhisperBackbone(Backbone):
    """Whisper's encoder on clip-length log-mels: positional table cropped to F frames, padding masked as keys."""

    def __init__(self, name: str, encoder: nn.Module, weights_id: str, finetune: str):
        super().__init__(name, weights_id, finetune)
        self.encoder = encoder
        self.log_mel = WhisperLogMel(encoder.config.num_mel_bins)
        self.hidden_dim = encoder.config.d_model
        self.num_layers = encoder.config.encoder_layers
        self._apply_finetune()

    @staticmethod
    def dims(config: dict) -> tuple[int, int]:
        return config["d_model"], config["encoder_layers"]

    @classmethod
    def random(cls, name: str, config: dict, weights_id: str, finetune: str) -> Backbone:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        return cls(name, WhisperEncoder(WhisperConfig(**config)), weights_id, finetune)

    @classmethod
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        _check_hf_folder(path, name)
        return cls(name, _hf_load(name, str(path), local=True).encoder, weights_id, finetune)

    @classmethod
    def from_hub(cls, name: str, hub_id: str, weights_id: str, finetune: str) -> Backbone:
        return cls(name, _hf_load(name, hub_id, local=False).encoder, weights_id, finetune)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_mel_frames(num_samples) - 1, 2, rounding_mode="floor") + 1  # conv2: stride 2, pad 1

    def _embed(self, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.encoder
        mel, mel_frames = self.log_mel.batch(wav, sizes)
        x = F.gelu(encoder.conv1(mel))
        x = x * _frame_mask(mel_frames, x.shape[2])[:, None, :]  # conv2 must see zeros past a clip, as unpadded
        x = F.gelu(encoder.conv2(x)).transpose(1, 2)
        if x.shape[1] > encoder.config.max_source_positions:
            raise TrustSerError(f"{self.name}: clips longer than {encoder.config.max_source_positions * 2 // 100} s "
                                f"exceed Whisper's positional table; crop them (--audio_duration)")
        x = x + encoder.embed_positions.weight[: x.shape[1]]
        x = F.dropout(x, p=encoder.config.dropout, training=encoder.training)
        return x, self.frame_lengths(torch.tensor(sizes, device=wav.device))

    def _layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        from transformers.masking_utils import create_bidirectional_mask
        return create_bidirectional_mask(config=self.encoder.config, inputs_embeds=x, attention_mask=mask)

    def _layer(self, index: int, x: torch.Tensor, context) -> torch.Tensor:
        return self.encoder.layers[index](x, context)

    def _after_last_layer(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.layer_norm(x)

    def _layer_drop(self, index: int) -> float:
        return self.encoder.config.encoder_layerdrop

    def _last_layer_parts(self) -> list[nn.Module]:
        return [self.encoder.layers[-1], self.encoder.layer_norm]

    def _never_trained(self) -> list:
        return [self.encoder.embed_positions]  # fixed sinusoids; HF never trains them either


class APCBackbone(Backbone):
    """s3prl's APC: fbank + CMVN per clip, unidirectional GRU layers over packed sequences."""

    def __init__(self, name: str, apc: nn.Module, preprocessor: nn.Module, audio: dict, weights_id: str,
                 finetune: str):
        super().__init__(name, weights_id, finetune)
        self.apc = apc
        self.preprocessor = preprocessor
        self.window = int(audio.get("frame_length", 25) * SAMPLE_RATE / 1000)
        self.shift = int(audio.get("frame_shift", 10) * SAMPLE_RATE / 1000)
        self.hidden_dim = apc.hidden_size
        self.num_layers = apc.num_layers
        self._apply_finetune()

    @staticmethod
    def dims(config: dict) -> tuple[int, int]:
        paras = config["model"]["paras"]
        return paras["hidden_size"], paras["num_layers"]

    @classmethod
    def random(cls, name: str, config: dict, weights_id: str, finetune: str) -> Backbone:
        return cls._build(name, config, None, weights_id, finetune)

    @classmethod
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        checkpoint = _read_s3prl_checkpoint(path, name)
        try:
            config, state = checkpoint["config"], checkpoint["model"]
            if config["model"]["paras"].get("vq") is not None:
                raise TrustSerError(f"{path} is a VQ-APC checkpoint; apc needs plain APC")
            return cls._build(name, config, state, weights_id, finetune, path)
        except (KeyError, TypeError) as err:
            raise TrustSerError(f"{path} is not an s3prl APC checkpoint ({{'config', 'model'}} expected; "
                                f"{type(err).__name__}: {err})") from None

    @classmethod
    def from_hub(cls, name: str, hub_id: str, weights_id: str, finetune: str) -> Backbone:
        return cls.from_local(name, _s3prl_download(name, hub_id), weights_id, finetune)

    @classmethod
    def _build(cls, name, config, state, weights_id, finetune, path=None) -> Backbone:
        from s3prl.upstream.apc.apc import APC
        from s3prl.upstream.apc.audio import create_transform
        audio = copy.deepcopy(config["data"]["audio"])
        preprocessor, feat_dim = create_transform(copy.deepcopy(audio))  # it pops keys from its argument
        apc = APC(feat_dim, **config["model"]["paras"])
        if state is not None:
            _load_weights(apc, state, path, name)
        return cls(name, apc, preprocessor, audio, weights_id, finetune)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples - self.window, self.shift, rounding_mode="floor") + 1  # kaldi snip_edges

    def _embed(self, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        features = [self.preprocessor(wav[i, :n].unsqueeze(0)) for i, n in enumerate(sizes)]
        frame_lengths = torch.tensor([len(f) for f in features], device=wav.device)
        return pad_sequence(features, batch_first=True), frame_lengths

    def _layers(self) -> nn.ModuleList:
        return self.apc.rnn_layers

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        return mask.sum(dim=1).cpu()

    def _layer(self, index: int, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rnn = self.apc.rnn_layers[index]
        packed, _ = rnn(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        out, _ = pad_packed_sequence(packed, batch_first=True, total_length=x.shape[1])
        out = F.dropout(out, self.apc.rnn_dropout.p, training=rnn.training)
        return out + x if self.apc.rnn_residual and index > 0 else out

    def _never_trained(self) -> list:
        return [self.apc.postnet]  # APC's prediction head: not part of the hidden states


class TERABackbone(Backbone):
    """s3prl's TERA: decibel-normalised log-mel + CMVN per clip, transformer layers with a padding mask."""

    hidden_includes_input = True

    def __init__(self, name: str, transformer: nn.Module, preprocessor: nn.Module, config: dict, weights_id: str,
                 finetune: str):
        super().__init__(name, weights_id, finetune)
        self.transformer = transformer
        self.preprocessor = preprocessor
        self.target_level = config["audio"]["target_level"]
        self.hop = round(config["audio"].get("hop_ms", 10) * SAMPLE_RATE / 1000)
        self.max_frames = config["task"]["sequence_length"]
        self.hidden_dim, self.num_layers = self.dims(config)
        self._apply_finetune()

    @staticmethod
    def dims(config: dict) -> tuple[int, int]:
        transformer = config["transformer"]
        return transformer["hidden_size"], transformer["num_hidden_layers"] + 1

    @classmethod
    def random(cls, name: str, config: dict, weights_id: str, finetune: str) -> Backbone:
        return cls._build(name, config, None, weights_id, finetune)

    @classmethod
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        checkpoint = _read_s3prl_checkpoint(path, name)
        # s3prl's layouts: new runs keep the model config under 'Upstream_Config', legacy ones under 'Config'
        config = next((checkpoint[k] for k in ("Upstream_Config", "Config")
                       if isinstance(checkpoint.get(k), dict) and "transformer" in checkpoint[k]), None)
        if config is None or "Transformer" not in checkpoint:
            raise TrustSerError(f"{path} is not an s3prl TERA checkpoint ('Transformer' weights and a config "
                                f"with 'transformer' expected)")
        try:
            return cls._build(name, config, checkpoint["Transformer"], weights_id, finetune, path)
        except (KeyError, TypeError, ValueError) as err:
            raise TrustSerError(f"{path}: unusable TERA config ({type(err).__name__}: {err})") from None

    @classmethod
    def from_hub(cls, name: str, hub_id: str, weights_id: str, finetune: str) -> Backbone:
        return cls.from_local(name, _s3prl_download(name, hub_id), weights_id, finetune)

    @classmethod
    def _build(cls, name, config, state, weights_id, finetune, path=None) -> Backbone:
        from s3prl.upstream.baseline.preprocessor import get_preprocessor
        from s3prl.upstream.mockingjay.model import TransformerConfig, TransformerModel
        if config["transformer"].get("pre_layer_norm") or "kaldi" in config["audio"]:
            raise TrustSerError(f"{path or name}: only TERA's post-layer-norm, on-the-fly log-mel variant is supported")
        with warnings.catch_warnings():  # s3prl also builds an unused MFCC transform whose top mel bands are empty
            warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")
            preprocessor, feat_dim, _ = get_preprocessor(copy.deepcopy(config["audio"]), process_input_only=True)
        transformer = TransformerModel(TransformerConfig(config["transformer"]), feat_dim)
        if state is not None:  # s3prl renames legacy TF-style LayerNorm names the same way
            state = {k.replace("gamma", "weight").replace("beta", "bias"): v for k, v in state.items()}
            _load_weights(transformer, state, path, name)
        return cls(name, transformer, preprocessor, config, weights_id, finetune)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, self.hop, rounding_mode="floor") + 1  # centred STFT

    def _embed(self, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        features = []
        for i, n in enumerate(sizes):
            clip = wav[i, :n]
            clip = clip * (10 ** (self.target_level / 20)) / (clip.pow(2).mean().sqrt() + 1e-10)
            features.append(self.preprocessor(clip.view(1, 1, -1), wavs_len=[n])[0][0])
        x = pad_sequence(features, batch_first=True)
        if self.max_frames > 0 and x.shape[1] > self.max_frames:
            raise TrustSerError(f"{self.name}: clips longer than {self.max_frames} frames ({self.max_frames // 100} s) "
                                f"would be split into chunks by s3prl; crop them (--audio_duration)")
        positions = _sinusoid_table(x.shape[1], self.hidden_dim, x.device)
        frame_lengths = torch.tensor([len(f) for f in features], device=wav.device)
        return self.transformer.input_representations(x, positions), frame_lengths

    def _layers(self) -> nn.ModuleList:
        return self.transformer.encoder.layer

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        return (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0  # s3prl's additive key mask

    def _layer(self, index: int, x: torch.Tensor, context) -> torch.Tensor:
        return self.transformer.encoder.layer[index](x, context)


_FAMILIES: dict[str, type] = {"wav2vec2": Wav2Vec2StyleBackbone, "wavlm": Wav2Vec2StyleBackbone,
                              "whisper": WhisperBackbone, "apc": APCBackbone, "tera": TERABackbone}


def _frame_mask(frame_lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~mask[..., None], 0.0)


def _stack_masked(hidden: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    return torch.stack(hidden).masked_fill_(~mask[None, :, :, None], 0.0)


def _sinusoid_table(frames: int, size: int, device: torch.device) -> torch.Tensor:
    """s3prl's (Mockingjay / TERA) sinusoidal positions, vectorised: [frames, size]."""
    position = torch.arange(frames, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, 2 * (torch.arange(size, dtype=torch.float64) // 2) / size)
    angle = position / rate
    angle[:, 0::2] = angle[:, 0::2].sin()
    angle[:, 1::2] = angle[:, 1::2].cos()
    return angle.to(device=device, dtype=torch.float32)


def _file_identity(path: Path) -> str:
    """file:<path>:<bytes>:<newest mtime>, over every file of a model folder."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [f.stat() for f in files]
    newest = max((int(s.st_mtime) for s in stats), default=0)
    return f"file:{path.resolve()}:{sum(s.st_size for s in stats)}:{newest}"


def _hub_failure(name: str, source: str, err: Exception) -> str:
    reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return (f"cannot fetch the {name} weights from {source} ({type(err).__name__}: {reason}); real weights need "
            f"network access to the hub, or --pretrain_path to a local copy, or --random_init for random weights")


def _hf_classes(family: str):
    from transformers import Wav2Vec2Config, Wav2Vec2Model, WavLMConfig, WavLMModel, WhisperConfig, WhisperModel
    return {"wav2vec2": (Wav2Vec2Config, Wav2Vec2Model), "wavlm": (WavLMConfig, WavLMModel),
            "whisper": (WhisperConfig, WhisperModel)}[family]


def _check_hf_folder(path: Path, name: str) -> None:
    family = BACKBONES[name].family
    if not (path / "config.json").is_file():
        raise TrustSerError(f"--pretrain_path {path}: {name} needs a Hugging Face model folder (with config.json)")
    model_type = read_json(path / "config.json").get("model_type")
    if model_type != family:
        raise TrustSerError(f"--pretrain_path {path} holds a '{model_type}' model; {name} needs a '{family}' one")


def _hf_load(name: str, source: str, local: bool) -> nn.Module:
    """from_pretrained(source), refusing folders whose weights do not cover the encoder."""
    family = BACKBONES[name].family
    _, model_class = _hf_classes(family)
    try:
        model, info = model_class.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
    except Exception as err:  # hub/network errors and damaged folders come in many types
        if not local:
            raise TrustSerError(_hub_failure(name, source, err)) from None
        raise TrustSerError(f"--pretrain_path {source}: cannot load a {family} model "
                            f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})") from None
    needed = "encoder." if family == "whisper" else ""
    missing = [k for k in info["missing_keys"] if k.startswith(needed) and "masked_spec_embed" not in k]
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        example = (missing or [str(m) for m in mismatched])[0]
        raise TrustSerError(f"{source}: {len(missing) + len(mismatched)} {name} weights missing or of the wrong "
                            f"shape (e.g. {example})")
    return model.eval()


def _conv_lengths(sizes: list[int], conv: nn.Conv1d) -> torch.Tensor:
    return torch.tensor([(n - conv.kernel_size[0]) // conv.stride[0] + 1 for n in sizes])


def _outside_autocast(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) in fp32 even under autocast (TF32 convolutions where cuDNN allows them, as outside autocast).

    cuDNN has no fast bf16 kernel for the 128-tap grouped positional convolution of wav2vec 2.0 / WavLM: under bf16
    it took about 30 ms of a 50 ms WavLM base+ forward (32 clips of 4 s, H100), against about 1 ms in fp32.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return module(x)
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())


def _masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, lengths: torch.Tensor) -> torch.Tensor:
    """GroupNorm of x [B, C, T] with statistics over each clip's first `lengths` frames (biased variance, as GroupNorm)."""
    batch, channels, frames = x.shape
    groups = x.float().reshape(batch, norm.num_groups, channels // norm.num_groups, frames)  # fp32 under autocast too
    valid = (torch.arange(frames, device=x.device)[None, :] < lengths.to(x.device)[:, None]).float()
    valid = valid[:, None, None, :]
    count = valid.sum(dim=(2, 3), keepdim=True) * groups.shape[2]
    mean = (groups * valid).sum(dim=(2, 3), keepdim=True) / count
    var = ((groups - mean) ** 2 * valid).sum(dim=(2, 3), keepdim=True) / count
    normed = ((groups - mean) / torch.sqrt(var + norm.eps)).reshape(batch, channels, frames)
    if norm.affine:
        normed = normed * norm.weight[None, :, None].float() + norm.bias[None, :, None].float()
    return normed.to(x.dtype)


def _read_s3prl_checkpoint(path: Path, name: str) -> dict:
    """weights_only load; s3prl pretraining runs also pickle their argparse arguments, which are allowed."""
    if not path.is_file():
        raise TrustSerError(f"--pretrain_path {path}: {name} needs an s3prl checkpoint file")
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = load_torch(path)
    if not isinstance(checkpoint, dict):
        raise TrustSerError(f"{path} is not an s3prl {name} checkpoint (a dict expected)")
    return checkpoint


def _load_weights(module: nn.Module, state: dict, path: Path | None, name: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise TrustSerError(f"{path}: weights do not fit {name} ({detail})") from None


def _s3prl_download(name: str, url: str) -> Path:
    """s3prl's cached copy of the checkpoint, downloading it unless HF_HUB_OFFLINE=1 (then: cached copy or error)."""
    from s3prl.util.download import _urls_to_filepaths
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        path = Path(_urls_to_filepaths(url, download=not offline))
        if not path.is_file():
            raise FileNotFoundError(f"HF_HUB_OFFLINE=1 and no cached copy at {path}")
        return path
    except Exception as err:  # requests / urllib / filesystem errors
        raise TrustSerError(_hub_failure(name, url, err)) from None

