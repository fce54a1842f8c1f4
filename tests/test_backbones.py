"""Backbone registry: padding invariance, agreement with Hugging Face / s3prl, gradients, finetune modes, weights.

Tiny random-init models only (CPU, seconds)."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.backbones import BACKBONES, build_backbone  # noqa: E402
from model.whisper_frontend import WhisperLogMel, mel_filters  # noqa: E402
from utils.core.errors import TrustSerError  # noqa: E402

pytestmark = [  # library noise: s3prl's unused MFCC transform (reference model), HF WavLM's mixed mask types
    pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values"),
    pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask"),
]
FAMILY_EXAMPLES = ["apc", "tera", "wavlm", "wav2vec2_0", "whisper_tiny"]
LENGTHS = [4800, 2410, 6400, 2410]  # two equal lengths share one CNN pass in wav2vec2 / WavLM

_cache: dict = {}


def tiny(name: str):
    if name not in _cache:
        _cache[name] = build_backbone(name, random_init=True, tiny=True)
    return _cache[name]


def padded_batch(lengths=LENGTHS, seed=1):
    generator = torch.Generator().manual_seed(seed)
    wav = torch.randn(len(lengths), max(lengths), generator=generator) * 0.1
    for i, n in enumerate(lengths):
        wav[i, n:] = 0.0
    return wav, torch.tensor(lengths)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def test_registry_numbers_match_the_configs():
    assert list(BACKBONES) == ["apc", "tera", "wavlm", "wav2vec2_0", "whisper_tiny", "whisper_base", "whisper_small"]
    expected = {"apc": (512, 3), "tera": (768, 4), "wavlm": (768, 12), "wav2vec2_0": (768, 12),
                "whisper_tiny": (384, 4), "whisper_base": (512, 6), "whisper_small": (768, 12)}
    from model.backbones import _FAMILIES
    for name, spec in BACKBONES.items():
        assert (spec.hidden_dim, spec.num_layers) == expected[name]
        assert _FAMILIES[spec.family].dims(spec.config) == expected[name]


def test_whisper_log_mel_equals_the_feature_extractor():
    from transformers import WhisperFeatureExtractor
    extractor = WhisperFeatureExtractor()
    assert torch.allclose(mel_filters(), torch.from_numpy(extractor.mel_filters).float(), atol=1e-8)
    generator = torch.Generator().manual_seed(0)
    for n in (16000, 24011):
        wav = torch.randn(n, generator=generator) * 0.1
        reference = extractor(wav.numpy(), sampling_rate=16000, max_length=n, return_tensors="pt").input_features[0]
        ours = WhisperLogMel()(wav)
        assert ours.shape == reference.shape == (80, n // 160)
        assert (ours - reference).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", FAMILY_EXAMPLES)
def test_padding_invariance_shapes_and_masks(name):
    backbone = tiny(name)
    wav, lengths = padded_batch()
    hidden, frame_lengths, mask = backbone(wav, lengths)
    assert hidden.shape == (backbone.num_layers, len(LENGTHS), int(frame_lengths.max()), backbone.hidden_dim)
    assert torch.equal(frame_lengths, backbone.frame_lengths(lengths))
    assert torch.equal(mask.sum(dim=1), frame_lengths) and mask.dtype == torch.bool
    for i, n in enumerate(LENGTHS):
        alone, alone_lengths, alone_mask = backbone(wav[i:i + 1, :n], lengths[i:i + 1])
        assert alone.shape[2] == alone_lengths[0] == frame_lengths[i] and bool(alone_mask.all())
        assert max_rel_err(hidden[:, i, :frame_lengths[i]], alone[:, 0]) < 1e-4
        assert hidden[:, i, frame_lengths[i]:].abs().sum().item() == 0.0


@pytest.mark.parametrize("name", ["wavlm", "wav2vec2_0"])
def test_ssl_models_match_hugging_face(name):
    backbone = tiny(name)
    wav, lengths = padded_batch([9000])
    hidden, _, _ = backbone(wav, lengths)
    reference = backbone.model(wav, output_hidden_states=True).hidden_states[1:]
    assert len(reference) == hidden.shape[0]
    assert max_rel_err(hidden, torch.stack(reference)) < 1e-4


@pytest.mark.parametrize("name", ["wavlm", "wav2vec2_0"])
def test_positional_convolution_stays_fp32_under_bf16_autocast(name):
    """cuDNN's bf16 kernels for the grouped 128-tap positional conv are slow; the wrapper runs it in fp32."""
    backbone = tiny(name)
    wav, lengths = padded_batch()
    x = torch.randn(2, 30, backbone.hidden_dim)
    pos_conv = backbone.model.encoder.pos_conv_embed
    seen = []
    handle = pos_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            backbone(wav, lengths)
            bf16_everywhere = pos_conv(x.bfloat16())
    finally:
        handle.remove()
    assert seen == [torch.float32, torch.bfloat16]  # the wrapper's call, then autocast's own choice
    assert bf16_everywhere.dtype == torch.bfloat16


def test_whisper_matches_hugging_face_on_a_30_second_clip():
    from transformers import WhisperFeatureExtractor
    backbone = tiny("whisper_tiny")
    wav, lengths = padded_batch([480000])  # Hugging Face's encoder only takes 3000 mel frames
    hidden, frame_lengths, _ = backbone(wav, lengths)
    features = WhisperFeatureExtractor()(wav[0].numpy(), sampling_rate=16000, return_tensors="pt").input_features
    reference = backbone.encoder(features, output_hidden_states=True).hidden_states[1:]
    assert frame_lengths.tolist() == [1500] and len(reference) == hidden.shape[0]
    assert max_rel_err(hidden, torch.stack(reference)) < 1e-4


def test_apc_matches_s3prl_upstream_expert(tmp_path):
    from s3prl.upstream.apc.expert import UpstreamExpert
    backbone = tiny("apc")
    checkpoint = tmp_path / "apc.ckpt"
    torch.save({"config": BACKBONES["apc"].tiny, "model": backbone.apc.state_dict()}, checkpoint)
    expert = UpstreamExpert(str(checkpoint)).eval()
    wav, lengths = padded_batch([7000, 5000])
    hidden, frame_lengths, _ = backbone(wav, lengths)
    with torch.no_grad():
        reference = torch.stack(expert([wav[0, :7000], wav[1, :5000]])["hidden_states"])
    assert reference.shape == hidden.shape
    assert max_rel_err(hidden, reference) < 1e-4


def test_tera_matches_s3prl_pretrained_transformer(tmp_path):
    import yaml
    from s3prl.upstream.mockingjay.builder import PretrainedTransformer
    backbone = tiny("tera")
    config = tmp_path / "tera.yaml"
    config.write_text(yaml.safe_dump(BACKBONES["tera"].tiny))
    options = {"load_pretrain": "False", "no_grad": "True", "dropout": "default", "spec_aug": "False",
               "spec_aug_prev": "True", "output_hidden_states": "True", "select_layer": -1,
               "permute_input": "False", "ckpt_file": ""}
    reference_model = PretrainedTransformer(options, inp_dim=-1, config=str(config))
    reference_model.model.load_state_dict(backbone.transformer.state_dict())
    wav, lengths = padded_batch([9000])
    hidden, _, _ = backbone(wav, lengths)
    _, reference = reference_model([wav[0]])
    assert reference.shape == hidden.shape
    assert max_rel_err(hidden, reference) < 1e-4


@pytest.mark.parametrize("name", FAMILY_EXAMPLES)
def test_last_layer_split_stacks_to_forward(name):
    backbone = tiny(name)
    assert backbone.supports_last_layer_split
    wav, lengths = padded_batch()
    hidden, frame_lengths, mask = backbone(wav, lengths)
    before, last_input, split_lengths, split_mask = backbone.forward_until_last(wav, lengths)
    last = backbone.run_last_layer(last_input, split_mask)
    assert before.shape[0] == backbone.num_layers - 1
    assert torch.equal(split_lengths, frame_lengths) and torch.equal(split_mask, mask)
    assert max_rel_err(torch.cat([before, last[None]]), hidden) < 1e-5


@pytest.mark.parametrize("name", FAMILY_EXAMPLES)
def test_gradients_reach_the_waveform_of_a_frozen_backbone(name):
    backbone = tiny(name)
    assert not any(p.requires_grad for p in backbone.parameters())
    wav, lengths = padded_batch([6000, 4000])
    wav.requires_grad_(True)
    hidden, _, mask = backbone(wav, lengths)
    (hidden * mask[None, :, :, None]).pow(2).mean().backward()
    assert wav.grad is not None and wav.grad[0].abs().sum() > 0 and wav.grad[1, :4000].abs().sum() > 0
    assert wav.grad[1, 4000:].abs().max().item() == 0.0  # padding does not influence the outputs
    assert all(p.grad is None for p in backbone.parameters())


def trainable_names(backbone) -> set[str]:
    return {n for n, p in backbone.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name, last_layer_prefix", [
    ("wav2vec2_0", "model.encoder.layers.1."), ("wavlm", "model.encoder.layers.1."),
    ("whisper_tiny", "encoder.layers.1."), ("apc", "apc.rnn_layers.2."), ("tera", "transformer.encoder.layer.1.")])
def test_finetune_modes(name, last_layer_prefix):
    frozen = build_backbone(name, random_init=True, tiny=True, finetune="frozen")
    frozen.train()
    assert trainable_names(frozen) == set() and not any(m.training for m in frozen.modules())

    last = build_backbone(name, random_init=True, tiny=True, finetune="unfrozen_last_layer")
    expected = {n for n, _ in last.named_parameters() if n.startswith(last_layer_prefix)}
    if name == "whisper_tiny":
        expected |= {"encoder.layer_norm.weight", "encoder.layer_norm.bias"}
    assert expected and trainable_names(last) == expected
    last.train()
    training = {n for n, m in last.named_modules() if m.training}
    assert last_layer_prefix.rstrip(".") in training
    assert all(n.startswith(last_layer_prefix.rstrip(".")) or n == "encoder.layer_norm" for n in training)
    last.eval()
    assert not any(m.training for m in last.modules())

    full = build_backbone(name, random_init=True, tiny=True, finetune="unfrozen")
    never = {"wav2vec2_0": "model.feature_extractor.", "wavlm": "model.feature_extractor.",
             "whisper_tiny": "encoder.embed_positions.", "apc": "apc.postnet.", "tera": None}[name]
    all_names = {n for n, _ in full.named_parameters()}
    kept_frozen = {n for n in all_names if never and n.startswith(never)} | {"model.masked_spec_embed"} & all_names
    assert trainable_names(full) == all_names - kept_frozen
    full.train()
    assert full.training
    if never:
        assert not any(m.training for n, m in full.named_modules() if n.startswith(never.rstrip(".")))


def test_random_init_is_deterministic_and_named():
    a = build_backbone("wavlm", random_init=True, tiny=True)
    torch.manual_seed(123)
    before = torch.rand(1)
    b = build_backbone("wavlm", random_init=True, tiny=True)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is not consumed
    assert a.weights_id == "random:wavlm:tiny:seed0"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def perturbed(backbone, module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    return backbone


def hidden_of(backbone):
    wav, lengths = padded_batch([7000, 5000])
    return backbone(wav, lengths)[0]


@pytest.mark.parametrize("name", ["wavlm", "wav2vec2_0"])
def test_local_hugging_face_folder(name, tmp_path):
    source = build_backbone(name, random_init=True, tiny=True)
    perturbed(source, source.model).model.save_pretrained(tmp_path)
    loaded = build_backbone(name, pretrain_path=str(tmp_path), tiny=True)
    assert loaded.weights_id.startswith(f"file:{tmp_path.resolve()}:")
    assert max_rel_err(hidden_of(loaded), hidden_of(source)) < 1e-6
    assert max_rel_err(hidden_of(tiny(name)), hidden_of(source)) > 1e-3


def test_local_whisper_folder(tmp_path):
    from transformers import WhisperModel
    source = build_backbone("whisper_base", random_init=True, tiny=True)
    perturbed(source, source.encoder)
    full = WhisperModel(source.encoder.config)
    full.encoder.load_state_dict(source.encoder.state_dict())
    full.save_pretrained(tmp_path)
    loaded = build_backbone("whisper_base", pretrain_path=str(tmp_path), tiny=True)
    assert max_rel_err(hidden_of(loaded), hidden_of(source)) < 1e-6


def test_local_s3prl_checkpoints(tmp_path):
    apc = build_backbone("apc", random_init=True, tiny=True)
    perturbed(apc, apc.apc)
    torch.save({"config": BACKBONES["apc"].tiny, "model": apc.apc.state_dict()}, tmp_path / "apc.ckpt")
    loaded = build_backbone("apc", pretrain_path=str(tmp_path / "apc.ckpt"), tiny=True)
    assert max_rel_err(hidden_of(loaded), hidden_of(apc)) < 1e-6

    tera = build_backbone("tera", random_init=True, tiny=True)
    perturbed(tera, tera.transformer)
    import argparse  # s3prl pretraining checkpoints carry their argparse arguments
    torch.save({"Upstream_Config": BACKBONES["tera"].tiny, "Transformer": tera.transformer.state_dict(),
                "Args": argparse.Namespace(seed=1)}, tmp_path / "tera.ckpt")
    loaded = build_backbone("tera", pretrain_path=str(tmp_path / "tera.ckpt"), tiny=True)
    assert max_rel_err(hidden_of(loaded), hidden_of(tera)) < 1e-6


def test_wrong_checkpoints_are_refused_by_name(tmp_path):
    apc = tiny("apc")
    torch.save({"config": BACKBONES["apc"].tiny, "model": apc.apc.state_dict()}, tmp_path / "apc.ckpt")
    with pytest.raises(TrustSerError, match="apc.ckpt is not an s3prl TERA checkpoint"):
        build_backbone("tera", pretrain_path=str(tmp_path / "apc.ckpt"), tiny=True)
    with pytest.raises(TrustSerError, match="apc.ckpt gives 3 hidden states of size 32; apc gives 3 of size 512"):
        build_backbone("apc", pretrain_path=str(tmp_path / "apc.ckpt"))  # tiny file, full-size backbone
    state = apc.apc.state_dict()
    state["rnn_layers.0.weight_ih_l0"] = torch.zeros(3, 3)
    torch.save({"config": BACKBONES["apc"].tiny, "model": state}, tmp_path / "bad.ckpt")
    with pytest.raises(TrustSerError, match="bad.ckpt: weights do not fit apc"):
        build_backbone("apc", pretrain_path=str(tmp_path / "bad.ckpt"), tiny=True)

    tiny("wavlm").model.save_pretrained(tmp_path / "wavlm")
    config = json.loads((tmp_path / "wavlm" / "config.json").read_text())
    (tmp_path / "wavlm" / "config.json").write_text(json.dumps({**config, "conv_dim": [8] * 7}))
    with pytest.raises(TrustSerError, match="wavlm: cannot load a wavlm model"):
        build_backbone("wavlm", pretrain_path=str(tmp_path / "wavlm"), tiny=True)  # weights of the wrong shape
    with pytest.raises(TrustSerError, match="wavlm holds a 'wavlm' model; whisper_tiny needs a 'whisper' one"):
        build_backbone("whisper_tiny", pretrain_path=str(tmp_path / "wavlm"), tiny=True)
    with pytest.raises(TrustSerError, match="needs a Hugging Face model folder"):
        build_backbone("wavlm", pretrain_path=str(tmp_path / "apc.ckpt"), tiny=True)
    (tmp_path / "untyped").mkdir()
    (tmp_path / "untyped" / "config.json").write_text("{}")
    with pytest.raises(TrustSerError, match="untyped/config.json has no model_type; wavlm needs a 'wavlm' model"):
        build_backbone("wavlm", pretrain_path=str(tmp_path / "untyped"), tiny=True)


def test_offline_hub_explains_the_three_choices(monkeypatch, tmp_path):
    import huggingface_hub.constants
    import s3prl.util.download
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(s3prl.util.download, "_download_dir", tmp_path / "s3prl")
    for name in ("whisper_tiny", "apc"):
        with pytest.raises(TrustSerError) as err:
            build_backbone(name)
        message = str(err.value)
        assert "\n" not in message
        assert all(choice in message for choice in ("network access", "--pretrain_path", "--random_init"))


def test_bad_arguments():
    with pytest.raises(TrustSerError, match="unknown --pretrain_model"):
        build_backbone("hubert", random_init=True)
    with pytest.raises(TrustSerError, match="--tiny needs --random_init"):
        build_backbone("apc", tiny=True)
    with pytest.raises(TrustSerError, match="exclude each other"):
        build_backbone("apc", random_init=True, pretrain_path="x")
    backbone = tiny("wav2vec2_0")
    with pytest.raises(TrustSerError, match="clip lengths must lie in"):
        backbone(torch.zeros(1, 1000), torch.tensor([300]))


def test_tera_chunks_long_clips_as_s3prl(tmp_path):
    """Clips over TERA's sequence_length (1500 frames, 15 s; 100 here) are encoded in equal chunks as s3prl's
    PretrainedTransformer does, per clip, so a short clip beside them changes nothing."""
    import yaml
    from model.backbones import TERABackbone
    from s3prl.upstream.mockingjay.builder import PretrainedTransformer
    config = {**BACKBONES["tera"].tiny, "task": {"sequence_length": 100}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = TERABackbone.random("tera", config, "random:test", "frozen")
    (tmp_path / "tera.yaml").write_text(yaml.safe_dump(config))
    options = {"load_pretrain": "False", "no_grad": "True", "dropout": "default", "spec_aug": "False",
               "spec_aug_prev": "True", "output_hidden_states": "True", "select_layer": -1,
               "permute_input": "False", "ckpt_file": ""}
    reference_model = PretrainedTransformer(options, inp_dim=-1, config=str(tmp_path / "tera.yaml"))
    reference_model.model.load_state_dict(backbone.transformer.state_dict())
    wav, lengths = padded_batch([41600, 8000, 17000])  # 261 frames: 3 chunks of 87; 51; 107: 2 chunks of 54
    hidden, frame_lengths, _ = backbone(wav, lengths)
    for i, n in enumerate(lengths.tolist()):
        _, reference = reference_model([wav[i, :n]])
        assert reference.shape[2] == frame_lengths[i]
        assert max_rel_err(hidden[:, i, :frame_lengths[i]], reference[:, 0]) < 1e-4


def test_whisper_takes_clips_up_to_its_positional_table_and_longer_runs_are_cropped_to_it(caplog):
    from utils.runs.identity import RunConfig
    from utils.training.protocol import crop_seconds
    whisper, apc = (build_backbone(name, random_init=True, tiny=True) for name in ("whisper_tiny", "apc"))
    assert whisper.max_seconds == 30
    whisper(torch.zeros(1, 30 * 16000), torch.tensor([30 * 16000]))        # the longest clip fits
    with pytest.raises(TrustSerError, match="clips longer than 30 s exceed Whisper's positional table"):
        whisper(torch.zeros(1, 30 * 16000 + 320), torch.tensor([30 * 16000 + 320]))
    run = RunConfig(pretrain_model="whisper_tiny", audio_duration=37)
    with caplog.at_level("INFO", logger="trust-ser"):
        assert crop_seconds(run, whisper) == 30 and crop_seconds(run, whisper) == 30
        assert crop_seconds(RunConfig(audio_duration=37), apc) == 37
        assert crop_seconds(RunConfig(audio_duration=6), whisper) == 6
    assert caplog.text.count("whisper_tiny takes clips of at most 30 s: clips are cropped to 30 s, not "
                             "--audio_duration 37") == 1
