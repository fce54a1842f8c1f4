"""Backbone registry (CONTRACT STUB — being implemented)."""
BACKBONES = ["apc", "tera", "wavlm", "wav2vec2_0", "whisper_tiny", "whisper_base", "whisper_small"]
