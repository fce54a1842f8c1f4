"""Pretrained speech backbones (`--pretrain_model`): one registry (BACKBONES), one module per family
(wav2vec2.py, whisper.py, apc.py, tera.py; base.py holds the shared Backbone class, hf.py Hugging Face loading).

Besides the 7 built-in names, `--pretrain_model` takes a Hugging Face hub id or model folder of the wav2vec2,
HuBERT, WavLM, data2vec-audio or Whisper families; its config.json gives the family and sizes (backbone_spec).

Every backbone maps a zero-padded 16 kHz batch to the hidden states of all its layers, [L, B, F, D], in the
original's layout: the Hugging Face families give their transformer layers' outputs (the embedding output is
dropped; the last one is after the encoder's final layer norm where there is one after the layers — Whisper,
stable-layer-norm models — as Hugging Face's last_hidden_state), APC / TERA give s3prl's `hidden_states` (TERA's
start with its input embedding).

Padding never changes a clip's hidden states: each clip's front end (log-mel, fbank, or the CNN encoder whose
GroupNorm normalises over time) runs on the clip alone, and the layers mask padded frames as keys. Padded frames
of the returned hidden states are zero. The one exception is Backbone.padded_batch_features(), the features the
original made of its zero-padded training batches (--protocol original).

Heavy libraries (transformers, s3prl) are imported on first use so that `--help` stays fast.
"""
from pathlib import Path

import torch

from model.backbones.apc import APC_360HR, APC_URL, TINY_APC, APCBackbone
from model.backbones.base import (FINETUNE_MODES, MIN_SAMPLES, RANDOM_SEED, SAMPLE_RATE, Backbone, BackboneSpec,
                                  content_fingerprint, file_identity)
from model.backbones.hf import HUB_ID, hf_config
from model.backbones.tera import TERA_URL, TERABackbone, tera_config
from model.backbones.wav2vec2 import (TINY_SSL, WAV2VEC2_BASE_960H, WAVLM_BASE_PLUS, Data2VecAudioBackbone,
                                      HubertBackbone, Wav2Vec2StyleBackbone, WavLMBackbone)
from model.backbones.whisper import TINY_WHISPER, WhisperBackbone, whisper_config
from utils.core.errors import TrustSerError

__all__ = ["BACKBONES", "FINETUNE_MODES", "MIN_SAMPLES", "SAMPLE_RATE", "Backbone", "BackboneSpec", "backbone_spec",
           "build_backbone", "check_backbone_name", "weights_identity"]

BACKBONES: dict[str, BackboneSpec] = {
    "apc": BackboneSpec("apc", APC_URL, 512, 3, APC_360HR, TINY_APC),
    "tera": BackboneSpec("tera", TERA_URL, 768, 4, tera_config(768, 3, 12), tera_config(32, 2, 2)),
    "wavlm": BackboneSpec("wavlm", "microsoft/wavlm-base-plus", 768, 12, WAVLM_BASE_PLUS,
                          {**TINY_SSL, "num_buckets": 32, "max_bucket_distance": 64, "layerdrop": 0.05}),
    "wav2vec2_0": BackboneSpec("wav2vec2", "facebook/wav2vec2-base-960h", 768, 12, WAV2VEC2_BASE_960H,
                               {**TINY_SSL, "layerdrop": 0.1}),
    "whisper_tiny": BackboneSpec("whisper", "openai/whisper-tiny", 384, 4, whisper_config(384, 4, 6), TINY_WHISPER),
    "whisper_base": BackboneSpec("whisper", "openai/whisper-base", 512, 6, whisper_config(512, 6, 8), TINY_WHISPER),
    "whisper_small": BackboneSpec("whisper", "openai/whisper-small", 768, 12, whisper_config(768, 12, 12),
                                  TINY_WHISPER),
}


# Hugging Face model_type -> wrapper: what `--pretrain_model <hub id or model folder>` accepts
HF_FAMILIES: dict[str, type] = {"wav2vec2": Wav2Vec2StyleBackbone, "wavlm": WavLMBackbone, "hubert": HubertBackbone,
                                "data2vec-audio": Data2VecAudioBackbone, "whisper": WhisperBackbone}
_FAMILIES: dict[str, type] = {**HF_FAMILIES, "apc": APCBackbone, "tera": TERABackbone}


def check_backbone_name(name: str, pretrain_path: str | None = None) -> None:
    """A built-in name, a supported model folder, or a hub id (its config.json is read when the backbone is
    built, so that aggregating results needs no network)."""
    if name in BACKBONES or (HUB_ID.match(name) and not Path(name).exists() and not pretrain_path):
        return
    backbone_spec(name, pretrain_path)


def backbone_spec(name: str, pretrain_path: str | None = None) -> BackboneSpec:
    """A built-in name's registry entry, or one made from the config.json of a hub id / model folder (or of its
    local copy, `pretrain_path`)."""
    if name in BACKBONES:
        return BACKBONES[name]
    if not (Path(name).is_dir() or HUB_ID.match(name)):
        raise TrustSerError(f"unknown --pretrain_model '{name}'; choose one of: {', '.join(BACKBONES)}, "
                            f"or a Hugging Face hub id (owner/name) or model folder")
    config = hf_config(pretrain_path or name)
    model_type = config.get("model_type")
    if model_type not in HF_FAMILIES:
        raise TrustSerError(f"--pretrain_model {name} is a '{model_type}' model; supported Hugging Face families: "
                            f"{', '.join(HF_FAMILIES)} (or a built-in name: {', '.join(BACKBONES)})")
    try:
        hidden_dim, num_layers = HF_FAMILIES[model_type].dims(config)
    except KeyError as err:
        raise TrustSerError(f"--pretrain_model {name}: its config.json lacks {err}") from None
    return BackboneSpec(model_type, name, hidden_dim, num_layers, config, config)


def build_backbone(name: str, *, pretrain_path: str | None = None, random_init: bool = False,
                   tiny: bool = False, finetune: str = "frozen") -> "Backbone":
    """The backbone `name` with hub weights (default), a local copy (`pretrain_path`) or seeded random weights."""
    if finetune not in FINETUNE_MODES:
        raise TrustSerError(f"unknown --finetune '{finetune}'; choose one of: {', '.join(FINETUNE_MODES)}")
    if random_init and pretrain_path:
        raise TrustSerError("--random_init and --pretrain_path exclude each other: pick one source of weights")
    if tiny and not (random_init or pretrain_path):
        raise TrustSerError("--tiny needs --random_init (or a --pretrain_path holding a tiny model)")
    if tiny and name not in BACKBONES:
        raise TrustSerError(f"--tiny applies to the built-in names only; {name} is built at its own size")
    spec = backbone_spec(name, pretrain_path)
    if not pretrain_path and name not in BACKBONES and Path(name).is_dir():
        pretrain_path = name  # a local model folder: its own weights
    family = _FAMILIES[spec.family]
    config = spec.tiny if tiny else spec.config
    if random_init:
        weights_id = _random_id(name, tiny)
        with torch.random.fork_rng(devices=[]):  # every script rebuilds the same weights, caller's RNG untouched
            torch.manual_seed(RANDOM_SEED)
            return family.random(name, config, weights_id, finetune)
    if pretrain_path:
        path = Path(pretrain_path)
        if not path.exists():
            raise TrustSerError(f"--pretrain_path {path} does not exist")
        backbone = family.from_local(name, path, file_identity(path), finetune)
    else:
        backbone = family.from_hub(name, spec.hub_id, f"hub:{spec.hub_id}", finetune)
    expected = family.dims(config)
    if (backbone.hidden_dim, backbone.num_layers) != expected:
        source = pretrain_path or spec.hub_id
        raise TrustSerError(f"{source} gives {backbone.num_layers} hidden states of size {backbone.hidden_dim}; "
                            f"{name}{' (tiny)' if tiny else ''} gives {expected[1]} of size {expected[0]}")
    return backbone


def _random_id(name: str, tiny: bool) -> str:
    return f"random:{name}:{'tiny' if tiny else 'full'}:seed{RANDOM_SEED}"


def weights_identity(name: str, pretrain_path: str | None = None, random_init: bool = False,
                     tiny: bool = False) -> str:
    """What a run's backbone starts from, without building it (no download): its seeded random weights, a hub
    repository, or a local folder / checkpoint file and a fingerprint of its contents."""
    if random_init:
        return _random_id(name, tiny)
    local = pretrain_path or (name if name not in BACKBONES and Path(name).is_dir() else None)
    if local:
        path = Path(local).expanduser()
        if not path.exists():
            raise TrustSerError(f"--pretrain_path {path} does not exist")
        return f"local:{path.resolve()}:{content_fingerprint(path)}"
    return f"hub:{BACKBONES[name].hub_id if name in BACKBONES else name}"
