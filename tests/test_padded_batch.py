"""--protocol original's training batches: the backbone in padded_batch_features() gives the features the original
made of its zero-padded batch, checked against Hugging Face's modules run the original's way
(model/pretrained_backbones.py of usc-sail/trust-ser)."""
import copy

import pytest
import torch
from torch import nn

from model.backbones import BACKBONES, build_backbone
from model.backbones.hf import hf_classes
from model.backbones.wav2vec2 import Wav2Vec2StyleBackbone
from model.backbones.whisper import WhisperBackbone

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")
# unequal clips, one of them the padded width; 6400 samples = 40 log-mel frames (Whisper's check: 2 x its table)
LENGTHS = [4900, 2410, 6400]
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                  final_dropout=0.0, layerdrop=0.0, dropout=0.0, encoder_layerdrop=0.0)
# the real models' configs (registry), narrowed and made shallow: the CNN front end keeps its layout, GroupNorm
# included; each Whisper size keeps its head count (width 8 per head)
SMALL_SSL = dict(conv_dim=(16,) * 7, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def small_config(name: str) -> dict:
    config = BACKBONES[name].config
    if BACKBONES[name].family == "whisper":
        heads = config["encoder_attention_heads"]
        width = {"d_model": 8 * heads, "encoder_ffn_dim": 32 * heads, "encoder_layers": 2, "decoder_layers": 1,
                 "decoder_attention_heads": heads, "decoder_ffn_dim": 32 * heads}
    else:
        width = SMALL_SSL
    return {**config, **width, **NO_DROPOUT}


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    wav = 0.1 * torch.randn(len(LENGTHS), max(LENGTHS), generator=torch.Generator().manual_seed(3))
    for i, n in enumerate(LENGTHS):
        wav[i, n:] = 0.0
    return wav, torch.tensor(LENGTHS)


def original_mask(length: torch.Tensor, shape) -> torch.Tensor:
    """The original's prepare_mask."""
    mask = torch.zeros(shape)
    mask[(torch.arange(mask.shape[0]), length - 1)] = 1
    return mask.flip([-1]).cumsum(-1).flip([-1]).bool()


def layer_outputs(layers: nn.ModuleList, run) -> list[torch.Tensor]:
    """Each layer's output during run() (Hugging Face 5 encoders no longer return them)."""
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o[0] if isinstance(o, tuple) else o))
             for layer in layers]
    try:
        last = run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, last


def original_wav2vec2(model, wav: torch.Tensor, lengths: torch.Tensor):
    """The original's Wav2Vec / WavLM forward(x, length=...): HF's CNN on the padded batch, its projection, its
    encoder with the bool frame mask; the stacked hidden states are the layers' outputs."""
    x = model.feature_extractor(wav).transpose(1, 2)
    x, _ = model.feature_projection(x)
    frames = model._get_feat_extract_output_lengths(lengths)
    mask = original_mask(frames, x.shape[:2])
    outputs, _ = layer_outputs(model.encoder.layers, lambda: model.encoder(x, attention_mask=mask))
    return torch.stack(outputs), frames


def original_whisper(encoder, wav: torch.Tensor, lengths: torch.Tensor):
    """The original's Whisper*.forward(x, length=...): WhisperFeatureExtractor on the padded rows with max_length the
    longest clip, the positional table cut to the frames, the encoder without a mask."""
    from transformers import WhisperFeatureExtractor
    extractor = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins)
    rows = [row.numpy() for row in wav]
    mel = extractor(rows, return_tensors="pt", sampling_rate=16000, max_length=int(lengths.max())).input_features
    frames = (mel.shape[-1] - 1) // 2 + 1
    encoder = copy.deepcopy(encoder)
    encoder.embed_positions = nn.Embedding.from_pretrained(encoder.embed_positions.weight[:frames])
    encoder.config.max_source_positions = frames      # HF 5's check that the input is 2 x the table
    outputs, last = layer_outputs(encoder.layers, lambda: encoder(mel))
    frame_lengths = (torch.div(lengths, 160, rounding_mode="floor") - 1) // 2 + 1
    return torch.stack([*outputs[:-1], last.last_hidden_state]), frame_lengths


def build(name: str):
    """Our backbone and the Hugging Face module it wraps, in train mode everywhere (as --protocol original)."""
    torch.manual_seed(0)
    spec = BACKBONES[name]
    if spec.family == "whisper":
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        module = WhisperEncoder(WhisperConfig.from_dict(small_config(name)))
        backbone = WhisperBackbone(name, module, "test", "frozen")
    else:
        config_class, model_class = hf_classes(spec.family)
        module = model_class(config_class.from_dict(small_config(name)))
        backbone = Wav2Vec2StyleBackbone(name, module, "test", "frozen")
    backbone.frozen_parts_train = True
    return backbone.train(), module


def max_relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("name", ["wav2vec2_0", "wavlm", "whisper_tiny", "whisper_base", "whisper_small"])
def test_padded_batch_features_are_the_originals(name):
    backbone, module = build(name)
    assert module.training
    wav, lengths = padded_batch()
    reference_of = original_whisper if BACKBONES[name].family == "whisper" else original_wav2vec2
    with torch.no_grad():
        reference, frames = reference_of(module, wav.clone(), lengths)
        with backbone.padded_batch_features():
            hidden, frame_lengths, mask = backbone(wav, lengths)
        per_clip, _, _ = backbone(wav, lengths)
    assert not backbone.padded_batch
    assert frame_lengths.tolist() == frames.tolist() and mask.sum(1).tolist() == frames.tolist()
    assert hidden.shape == reference.shape
    for i, n in enumerate(frames.tolist()):
        for layer in range(hidden.shape[0]):
            assert max_relative_error(hidden[layer, i, :n], reference[layer, i, :n]) <= 1e-4, (i, layer)
        assert hidden[:, i, n:].abs().sum() == 0
    # the short clips: padding reached their valid frames, so the per-clip features differ from the original's
    for i in (0, 1):
        assert max_relative_error(per_clip[:, i, :frames[i]], reference[:, i, :frames[i]]) > 1e-3
    n = frames[2]   # the longest clip has no padding: the same either way
    assert max_relative_error(per_clip[:, 2, :n], reference[:, 2, :n]) <= 1e-4


def test_tera_padded_batch_mask_is_the_originals():
    backbone = build_backbone("tera", random_init=True, tiny=True).eval()
    wav, lengths = padded_batch()
    with torch.no_grad():
        hidden, frame_lengths, mask = backbone(wav, lengths)
        with backbone.padded_batch_features():
            padded, original_lengths, original = backbone(wav, lengths)
    # the original's TERA.get_feat_extract_output_lengths: (N - 400) // 160 + 1, 2 or 3 frames short of ours
    assert original_lengths.tolist() == [(n - 400) // 160 + 1 for n in LENGTHS] == [29, 13, 38]
    assert frame_lengths.tolist() == [n // 160 + 1 for n in LENGTHS] == [31, 16, 41]
    assert torch.equal(original, original_mask(original_lengths, mask.shape))
    torch.testing.assert_close(padded, hidden * original[None, :, :, None])
    assert all(hidden[:, i, n - 1].abs().sum() > 0 for i, n in enumerate(frame_lengths.tolist()))   # real frames
