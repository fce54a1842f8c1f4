"""Tiny random Hugging Face speech encoders of each supported family, saved as model folders (no download)."""
from pathlib import Path

_CNN = dict(conv_dim=(16,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
            conv_bias=True, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
# each family in the variant furthest from the built-in base models: layer-norm front ends, stable layer norm,
# data2vec-audio's stacked positional convolutions
TINY_CONFIGS = {
    "hubert": dict(_CNN, feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16,
                   num_conv_pos_embedding_groups=4),
    "data2vec-audio": dict(_CNN, feat_extract_norm="layer", num_conv_pos_embeddings=3, conv_pos_kernel_size=5,
                           num_conv_pos_embedding_groups=4),
    "wavlm": dict(_CNN, feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=4, num_buckets=32, max_bucket_distance=64),
    "whisper": dict(d_model=32, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                    decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=80, max_source_positions=1500),
}


def save_tiny_model(family: str, folder: Path) -> Path:
    """A seeded random model of `family` saved with save_pretrained into `folder`."""
    import torch
    from model.backbones.hf import hf_classes
    config_class, model_class = hf_classes(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # not build_backbone's random_init seed
        model_class(config_class(**TINY_CONFIGS[family])).save_pretrained(folder)
    return folder
