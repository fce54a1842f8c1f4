"""s3prl's TERA: a transformer over decibel-normalised log-mels. Clips longer than the pretraining
sequence_length (1500 frames, 15 s) are encoded in equal chunks, as s3prl's PretrainedTransformer does."""
import copy
import math
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from model.backbones.base import (SAMPLE_RATE, Backbone, S3prlBackbone, frame_mask, load_weights,
                                  read_s3prl_checkpoint)
from utils.core.errors import TrustSerError

_TERA_FEATURE = {"feat_type": "mel", "log": True, "delta": 0, "cmvn": True}
_TERA_AUDIO = {"target_level": -25, "win_ms": 25, "hop_ms": 10, "n_freq": 201, "n_mels": 80, "n_mfcc": 13,
               "input": {**_TERA_FEATURE, "channel": 0}, "target": {**_TERA_FEATURE, "channel": 1}}


def tera_config(hidden: int, layers: int, heads: int) -> dict:
    transformer = {"input_dim": -1, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                   "intermediate_size": 4 * hidden, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                   "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
                   "share_layer": False, "pre_layer_norm": False}
    return {"transformer": transformer, "task": {"sequence_length": 1500}, "audio": _TERA_AUDIO}



TERA_URL = ("https://huggingface.co/s3prl/tera/resolve/main/"
             "tera_logMelBase_T_F_M_AdamW_b32_1m_960hr_drop1/states-1000000.ckpt")


class TERABackbone(S3prlBackbone):
    """s3prl's TERA: decibel-normalised log-mel + CMVN per clip, transformer layers with a padding mask."""

    hidden_includes_input = True

    def __init__(self, name: str, transformer: nn.Module, preprocessor: nn.Module, config: dict, weights_id: str,
                 finetune: str):
        super().__init__(name, weights_id, finetune)
        self.transformer = transformer
        self.preprocessor = preprocessor
        self.target_level = config["audio"]["target_level"]
        self.hop = round(config["audio"].get("hop_ms", 10) * SAMPLE_RATE / 1000)
        self.window = round(config["audio"].get("win_ms", 25) * SAMPLE_RATE / 1000)
        self.max_frames = config["task"]["sequence_length"]
        self.hidden_dim, self.num_layers = self.dims(config)
        self._apply_finetune()

    @staticmethod
    def dims(config: dict) -> tuple[int, int]:
        transformer = config["transformer"]
        return transformer["hidden_size"], transformer["num_hidden_layers"] + 1

    @classmethod
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        checkpoint = read_s3prl_checkpoint(path, name)
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
            load_weights(transformer, state, path, name)
        return cls(name, transformer, preprocessor, config, weights_id, finetune)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return torch.div(num_samples, self.hop, rounding_mode="floor") + 1  # centred STFT

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """In padded_batch_features() the mask (and the frames kept) end (N - 400) // 160 + 1 frames in, as the
        original's mask of its training batches: its frame count formula left out the last 2-3 frames of a clip."""
        hidden, frame_lengths, mask = super().forward(wav, lengths)
        if not self.padded_batch:
            return hidden, frame_lengths, mask
        pooled = torch.div(lengths.to(mask.device) - self.window, self.hop, rounding_mode="floor") + 1
        mask = frame_mask(pooled, mask.shape[1])
        return hidden.masked_fill(~mask[None, :, :, None], 0.0), pooled, mask

    def _embed(self, wav: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        features = []
        for i, n in enumerate(sizes):
            clip = wav[i, :n]
            clip = clip * (10 ** (self.target_level / 20)) / (clip.pow(2).mean().sqrt() + 1e-10)
            features.append(self.preprocessor(clip.view(1, 1, -1), wavs_len=[n])[0][0])
        x = pad_sequence(features, batch_first=True)
        frame_lengths = torch.tensor([len(f) for f in features], device=wav.device)
        table = _sinusoid_table(min(x.shape[1], self.max_frames or x.shape[1]), self.hidden_dim, x.device)
        _, positions = self._chunk_index(frame_lengths, x.shape[1])
        return self.transformer.input_representations(x, table[positions]), frame_lengths

    def _chunk_size(self, frames: int) -> int:
        """s3prl's chunking of clips over sequence_length frames: torch.chunk into ceil(frames / max) equal parts."""
        if self.max_frames <= 0 or frames <= self.max_frames:
            return frames
        return math.ceil(frames / math.ceil(frames / self.max_frames))

    def _chunk_index(self, frame_lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's chunk and position in it [B, width], chunked by its own clip's length (as s3prl chunks
        a clip encoded alone), so padding changes nothing."""
        sizes = torch.tensor([self._chunk_size(n) for n in frame_lengths.tolist()], device=frame_lengths.device)
        frames = torch.arange(width, device=frame_lengths.device)[None, :]
        return torch.div(frames, sizes[:, None], rounding_mode="floor"), frames % sizes[:, None]

    def _layers(self) -> nn.ModuleList:
        return self.transformer.encoder.layer

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        """s3prl's additive key mask; clips chunked for length attend within their chunk only."""
        lengths = mask.sum(dim=1)
        if self.max_frames <= 0 or int(lengths.max()) <= self.max_frames:
            return (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        chunk, _ = self._chunk_index(lengths, mask.shape[1])
        visible = mask[:, None, :] & (chunk[:, :, None] == chunk[:, None, :])
        return (1.0 - visible[:, None].to(x.dtype)) * -10000.0

    def _layer(self, index: int, x: torch.Tensor, context) -> torch.Tensor:
        return self.transformer.encoder.layer[index](x, context)



def _sinusoid_table(frames: int, size: int, device: torch.device) -> torch.Tensor:
    """s3prl's (Mockingjay / TERA) sinusoidal positions, vectorised: [frames, size]."""
    position = torch.arange(frames, dtype=torch.float64)[:, None]
    rate = torch.pow(10000.0, 2 * (torch.arange(size, dtype=torch.float64) // 2) / size)
    angle = position / rate
    angle[:, 0::2] = angle[:, 0::2].sin()
    angle[:, 1::2] = angle[:, 1::2].cos()
    return angle.to(device=device, dtype=torch.float32)
