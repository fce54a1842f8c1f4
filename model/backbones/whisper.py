"""Whisper's encoder (Hugging Face) on clip-length log-mels."""
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from model.backbones.base import Backbone, frame_mask
from model.backbones.hf import check_hf_folder, hf_load
from model.whisper_frontend import HOP_LENGTH, SAMPLE_RATE, WhisperLogMel, num_mel_frames
from utils.core.errors import TrustSerError

def whisper_config(d_model: int, layers: int, heads: int) -> dict:
    return dict(d_model=d_model, encoder_layers=layers, encoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
                num_mel_bins=80, max_source_positions=1500)


TINY_WHISPER = {**whisper_config(32, 2, 2), "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 64}


class WhisperBackbone(Backbone):
    """Whisper's encoder on clip-length log-mels: positional table cropped to F frames, padding masked as keys
    (in padded_batch_features(): log-mels of the padded rows, no mask, as the original's training batches)."""

    def __init__(self, name: str, encoder: nn.Module, weights_id: str, finetune: str):
        super().__init__(name, weights_id, finetune)
        self.encoder = encoder
        self.log_mel = WhisperLogMel(encoder.config.num_mel_bins)
        self.hidden_dim = encoder.config.d_model
        self.num_layers = encoder.config.encoder_layers
        self.max_seconds = encoder.config.max_source_positions * 2 * HOP_LENGTH / SAMPLE_RATE   # conv2: stride 2
        self._apply_finetune()

    @staticmethod
    def dims(config: dict) -> tuple[int, int]:
        return config["d_model"], config["encoder_layers"]

    @classmethod
    def random(cls, name: str, config: dict, weights_id: str, finetune: str) -> Backbone:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        return cls(name, WhisperEncoder(WhisperConfig.from_dict(config)), weights_id, finetune)

    @classmethod
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        check_hf_folder(path, name, "whisper")
        return cls(name, hf_load(name, "whisper", str(path), local=True).encoder, weights_id, finetune)

    @classmethod
    def from_hub(cls, name: str, hub_id: str, weights_id: str, finetune: str) -> Backbone:
        return cls(name, hf_load(name, "whisper", hub_id, local=False).encoder, weights_id, finetune)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_mel_frames(num_samples) - 1, 2, rounding_mode="floor") + 1  # conv2: stride 2, pad 1

    def _embed(self, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.encoder
        # the original's training batches: log-mels of the padded rows (the clamp at each row's maximum - 8 covers
        # the padding too), so conv2 sees them whole
        mel, mel_frames = self.log_mel.batch(wav, [max(sizes)] * len(sizes) if self.padded_batch else sizes)
        x = F.gelu(encoder.conv1(mel))
        x = x * frame_mask(mel_frames, x.shape[2])[:, None, :]  # conv2 must see zeros past a clip, as unpadded
        x = F.gelu(encoder.conv2(x)).transpose(1, 2)
        if x.shape[1] > encoder.config.max_source_positions:
            raise TrustSerError(f"{self.name}: clips longer than {self.max_seconds:g} s exceed Whisper's positional "
                                f"table")
        x = x + encoder.embed_positions.weight[: x.shape[1]]
        x = F.dropout(x, p=encoder.config.dropout, training=encoder.training)
        return x, self.frame_lengths(torch.tensor(sizes, device=wav.device))

    def _layers(self) -> nn.ModuleList:
        return self.encoder.layers

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        if self.padded_batch:
            return None  # the original's training batches: every frame attends to the padding too
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
