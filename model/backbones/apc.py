"""s3prl's APC (autoregressive predictive coding): GRU layers over fbank features."""
import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from model.backbones.base import SAMPLE_RATE, Backbone, S3prlBackbone, load_weights, read_s3prl_checkpoint
from utils.core.errors import TrustSerError

# s3prl's pretraining configs (pretrain/apc/config_model.yaml; tera logMelBase-T-F-M with the "drop1" dropout).
_APC_AUDIO = {"feat_type": "fbank", "feat_dim": 80, "frame_length": 25, "frame_shift": 10, "decode_wav": False}
APC_360HR = {"model": {"paras": {"num_layers": 3, "hidden_size": 512, "dropout": 0.1, "residual": True}},
            "data": {"audio": _APC_AUDIO}}

APC_URL = "https://huggingface.co/leo19941227/apc_series/resolve/main/apc_360hr.ckpt"
TINY_APC = {"model": {"paras": {"num_layers": 3, "hidden_size": 32, "dropout": 0.1, "residual": True}},
            "data": {"audio": _APC_AUDIO}}


class APCBackbone(S3prlBackbone):
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
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        checkpoint = read_s3prl_checkpoint(path, name)
        try:
            config, state = checkpoint["config"], checkpoint["model"]
            if config["model"]["paras"].get("vq") is not None:
                raise TrustSerError(f"{path} is a VQ-APC checkpoint; apc needs plain APC")
            return cls._build(name, config, state, weights_id, finetune, path)
        except (KeyError, TypeError) as err:
            raise TrustSerError(f"{path} is not an s3prl APC checkpoint ({{'config', 'model'}} expected; "
                                f"{type(err).__name__}: {err})") from None

    @classmethod
    def _build(cls, name, config, state, weights_id, finetune, path=None) -> Backbone:
        from s3prl.upstream.apc.apc import APC
        from s3prl.upstream.apc.audio import create_transform
        audio = copy.deepcopy(config["data"]["audio"])
        preprocessor, feat_dim = create_transform(copy.deepcopy(audio))  # it pops keys from its argument
        apc = APC(feat_dim, **config["model"]["paras"])
        if state is not None:
            load_weights(apc, state, path, name)
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
