"""wav2vec 2.0 style encoders (Hugging Face): wav2vec 2.0, WavLM, HuBERT, data2vec-audio.

All four share the layout CNN feature encoder -> projection -> convolutional positions -> transformer layers, in
two orders: post-layer-norm ("base" models: layer norm before the first layer) and stable-layer-norm
(`do_stable_layer_norm`, most "large" models: pre-norm layers, layer norm after the last one)."""
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from model.backbones.base import Backbone, frame_mask
from model.backbones.hf import check_hf_folder, hf_classes, hf_load

_CNN_ENCODER = dict(conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                    conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
                    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
_BASE_TRANSFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         layer_norm_eps=1e-5, hidden_dropout=0.1, attention_dropout=0.1, feat_proj_dropout=0.1,
                         mask_time_prob=0.05)
TINY_SSL = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False, num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)

WAV2VEC2_BASE_960H = {**_CNN_ENCODER, **_BASE_TRANSFORMER, "activation_dropout": 0.1, "layerdrop": 0.1, "vocab_size": 32}
WAVLM_BASE_PLUS = {**_CNN_ENCODER, **_BASE_TRANSFORMER, "activation_dropout": 0.0, "layerdrop": 0.05,
                   "num_buckets": 320, "max_bucket_distance": 800}


class Wav2Vec2StyleBackbone(Backbone):
    """CNN encoder per clip, then the transformer layers with a padding mask."""

    model_type = "wav2vec2"  # Hugging Face's name of the architecture (config.json's model_type)
    fused_attention: bool | None = None  # WavLM: fused attention (None: on CUDA only); see _fused_attention
    front_end_is_deterministic = True    # the CNN encoder: no dropout, GroupNorm over each clip (not in a padded batch)

    def __init__(self, name: str, model: nn.Module, weights_id: str, finetune: str):
        super().__init__(name, weights_id, finetune)
        self.model = model
        self.is_wavlm = model.config.model_type == "wavlm"
        if self.is_wavlm:
            # its attention (transformers) gives torch a bool padding mask beside the float position bias; torch
            # turns the first into the second's type (the same attention) but warns on every forward of the mix
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
        self.stable_layer_norm = getattr(model.config, "do_stable_layer_norm", False)
        self.hidden_dim = model.config.hidden_size
        self.num_layers = model.config.num_hidden_layers
        self.front_end_dim = model.config.conv_dim[-1]
        self._apply_finetune()

    @staticmethod
    def dims(config: dict) -> tuple[int, int]:
        return config["hidden_size"], config["num_hidden_layers"]

    @classmethod
    def random(cls, name: str, config: dict, weights_id: str, finetune: str) -> Backbone:
        config_class, model_class = hf_classes(cls.model_type)
        return cls(name, model_class(config_class.from_dict(config)), weights_id, finetune)

    @classmethod
    def from_local(cls, name: str, path: Path, weights_id: str, finetune: str) -> Backbone:
        check_hf_folder(path, name, cls.model_type)
        return cls(name, hf_load(name, cls.model_type, str(path), local=True), weights_id, finetune)

    @classmethod
    def from_hub(cls, name: str, hub_id: str, weights_id: str, finetune: str) -> Backbone:
        return cls(name, hf_load(name, cls.model_type, hub_id, local=False), weights_id, finetune)

    def frame_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(num_samples).long()

    def _cnn_features(self, wav: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """The CNN on the padded batch, each clip cropped to its own frames.

        Base models put a GroupNorm (per channel, over time) after the first conv: its statistics are taken over
        each clip's valid frames only, so padding changes nothing ("layer" front ends normalise each frame alone).
        Every later conv output frame reads only input frames of its own clip, hence the valid frames equal those
        of the clip encoded alone. In padded_batch_features() the GroupNorm takes them over the whole padded width,
        as Hugging Face's feature encoder on the batch (the original's training batches).
        """
        layers = self.model.feature_extractor.conv_layers
        x = wav[:, None, : max(sizes)]
        first = layers[0]
        if isinstance(getattr(first, "layer_norm", None), nn.GroupNorm) and not self.padded_batch:
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
        x = self.model.feature_projection(front)
        x = x[0] if isinstance(x, tuple) else x  # wav2vec 2.0 / data2vec also return the unprojected features
        valid = frame_mask(frame_lengths, x.shape[1])[..., None]
        x = x.masked_fill(~valid, 0.0)  # as HF, before the conv position
        encoder = self.model.encoder
        x = x + self._positions(x, valid)
        if not self.stable_layer_norm:
            x = encoder.layer_norm(x)
        return encoder.dropout(x), frame_lengths

    def _positions(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The convolutional positions. data2vec-audio stacks several convolutions: padded frames are zeroed
        between them, as each would see zeros past a clip encoded alone."""
        positions = self.model.encoder.pos_conv_embed
        if not hasattr(positions, "layers"):
            return _outside_autocast(positions, x)
        h = x
        for layer in positions.layers:
            h = _outside_autocast(layer, h.transpose(1, 2)).transpose(1, 2).masked_fill(~valid, 0.0)
        return h

    def _layers(self) -> nn.ModuleList:
        return self.model.encoder.layers

    def _context(self, x: torch.Tensor, mask: torch.Tensor):
        if self.is_wavlm:  # relative position bias [H, F, F]: made by layer 0, shared by all layers (depends on F only)
            frames = mask.shape[1]
            return mask, self.model.encoder.layers[0].attention.compute_bias(frames, frames)
        from transformers.masking_utils import create_bidirectional_mask
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=x, attention_mask=mask)

    def _layer(self, index: int, x: torch.Tensor, context) -> torch.Tensor:
        layer = self.model.encoder.layers[index]
        if not self.is_wavlm:           # Hugging Face runs these through scaled_dot_product_attention already
            return layer(x, attention_mask=context)
        mask, bias = context
        if self._fused_attention(x):
            return fused_wavlm_layer(layer, x, mask, bias, self.stable_layer_norm)
        bias = bias.unsqueeze(0).expand(mask.shape[0], -1, -1, -1).reshape(-1, *bias.shape[1:])
        return layer(x, attention_mask=mask.long(), position_bias=bias, index=index)[0]

    def _fused_attention(self, x: torch.Tensor) -> bool:
        """WavLM's attention through scaled_dot_product_attention on CUDA (`fused_attention`: None), where Hugging
        Face's eager path also returns the attention weights and takes an fp32 [B x H, F, F] bias; CPU keeps
        Hugging Face's layers, so its results stay bit for bit what they were."""
        return x.is_cuda if self.fused_attention is None else self.fused_attention

    def _after_last_layer(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encoder.layer_norm(x) if self.stable_layer_norm else x

    def _last_layer_parts(self) -> list[nn.Module]:
        encoder = self.model.encoder
        return [encoder.layers[-1], encoder.layer_norm] if self.stable_layer_norm else [encoder.layers[-1]]

    def _layer_drop(self, index: int) -> float:
        return 0.0 if self.is_wavlm and index == 0 else self.model.config.layerdrop

    def _never_trained(self) -> list:
        """The CNN encoder stays frozen, as HF's freeze_feature_encoder(); SpecAugment's mask vector is unused."""
        parts = [self.model.feature_extractor]
        if getattr(self.model, "masked_spec_embed", None) is not None:
            parts.append(self.model.masked_spec_embed)
        return parts


def fused_wavlm_layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor, position_bias: torch.Tensor,
                      stable_layer_norm: bool) -> torch.Tensor:
    """Hugging Face's WavLM encoder layer (post- or pre-layer-norm) with its attention fused: x [B, F, D], mask
    [B, F] (True = real frame), position_bias [H, F, F] (layer 0's compute_bias)."""
    h = layer.layer_norm(x) if stable_layer_norm else x
    h = x + layer.dropout(_wavlm_attention(layer.attention, h, mask, position_bias))
    if stable_layer_norm:
        return h + layer.feed_forward(layer.final_layer_norm(h))
    h = layer.layer_norm(h)
    return layer.final_layer_norm(h + layer.feed_forward(h))


def _wavlm_attention(attn: nn.Module, x: torch.Tensor, mask: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
    """WavLMAttention: the gated relative position bias and the padding mask as one additive mask [B, H, F, F] in
    the compute dtype, then scaled_dot_product_attention (dropout as the layer's, while training)."""
    batch, frames, dim = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    per_head = x.view(batch, frames, heads, head_dim).transpose(1, 2)            # [B, H, F, d]
    gate_a, gate_b = torch.sigmoid(attn.gru_rel_pos_linear(per_head).view(batch, heads, frames, 2, 4).sum(-1)).chunk(2, -1)
    gate = gate_a * (gate_b * attn.gru_rel_pos_const - 1.0) + 2.0                # [B, H, F, 1]
    q, k, v = (proj(x).view(batch, frames, heads, head_dim).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    bias = (gate * position_bias).masked_fill(~mask[:, None, None, :], float("-inf")).to(q.dtype)
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                     dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).reshape(batch, frames, dim))


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
    centered = groups - mean
    var = (centered ** 2 * valid).sum(dim=(2, 3), keepdim=True) / count
    normed = (centered / torch.sqrt(var + norm.eps)).reshape(batch, channels, frames)
    if norm.affine:
        normed = normed * norm.weight[None, :, None].float() + norm.bias[None, :, None].float()
    return normed.to(x.dtype)


class WavLMBackbone(Wav2Vec2StyleBackbone):
    model_type = "wavlm"


class HubertBackbone(Wav2Vec2StyleBackbone):
    model_type = "hubert"


class Data2VecAudioBackbone(Wav2Vec2StyleBackbone):
    model_type = "data2vec-audio"
