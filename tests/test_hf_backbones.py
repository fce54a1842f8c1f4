"""Any Hugging Face speech encoder as --pretrain_model: tiny random HuBERT / data2vec-audio / WavLM / Whisper
folders (save_pretrained, no download): family and sizes from config.json, agreement with Hugging Face, padding
invariance, the three finetune modes, run folder names and the fast failure without network."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_models import TINY_CONFIGS, save_tiny_model  # noqa: E402
from model.backbones import backbone_spec, build_backbone  # noqa: E402
from model.backbones.hf import hf_classes  # noqa: E402
from utils.core.errors import TrustSerError  # noqa: E402
from utils.runs.paths import backbone_dir_name  # noqa: E402

FAMILIES = list(TINY_CONFIGS)
LENGTHS = [4800, 2410, 6400]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {family: save_tiny_model(family, root / f"tiny-{family}") for family in FAMILIES}


def padded_batch():
    wav = torch.randn(len(LENGTHS), max(LENGTHS), generator=torch.Generator().manual_seed(1)) * 0.1
    for i, n in enumerate(LENGTHS):
        wav[i, n:] = 0.0
    return wav, torch.tensor(LENGTHS)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_and_sizes_come_from_config_json(folders, family):
    spec = backbone_spec(str(folders[family]))
    assert (spec.family, spec.hidden_dim, spec.num_layers) == (family, 32, 3)
    backbone = build_backbone(str(folders[family]))
    assert (backbone.hidden_dim, backbone.num_layers) == (32, 3)
    assert backbone.weights_id.startswith("file:")


@pytest.mark.parametrize("family", ["hubert", "data2vec-audio", "wavlm"])
def test_matches_hugging_face_on_one_clip(folders, family):
    backbone = build_backbone(str(folders[family]))
    reference = hf_classes(family)[1].from_pretrained(folders[family]).eval()
    wav = torch.randn(1, 6400, generator=torch.Generator().manual_seed(2)) * 0.1
    hidden, _, _ = backbone(wav, torch.tensor([6400]))
    with torch.no_grad():
        out = reference(wav, output_hidden_states=True)
    # HF records the layers' outputs; the last one of ours is after the final layer norm (last_hidden_state)
    torch.testing.assert_close(hidden[:-1], torch.stack(out.hidden_states[1:-1]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(hidden[-1], out.last_hidden_state, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_invariance(folders, family):
    backbone = build_backbone(str(folders[family]))
    wav, lengths = padded_batch()
    hidden, frame_lengths, _ = backbone(wav, lengths)
    for i, n in enumerate(LENGTHS):
        alone, _, _ = backbone(wav[i:i + 1, :n], lengths[i:i + 1])
        assert alone.shape[2] == frame_lengths[i]
        assert (hidden[:, i, :frame_lengths[i]] - alone[:, 0]).abs().max() < 1e-4 * alone.abs().max()
        assert hidden[:, i, frame_lengths[i]:].abs().sum() == 0


def test_loading_and_a_padded_wavlm_forward_print_nothing(folders, capfd):
    """No "Loading weights" bar, no transformers notes, no torch deprecation warning on every forward."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = build_backbone(str(folders["wavlm"]))
        hidden, frame_lengths, _ = backbone(*padded_batch())
    assert hidden.shape[:2] == (3, 3) and frame_lengths.tolist() == [(n - 400) // 320 + 1 for n in LENGTHS]
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("family", FAMILIES)
def test_three_finetune_modes_and_last_layer_split(folders, family):
    path = str(folders[family])
    frozen = build_backbone(path, finetune="frozen")
    assert not any(p.requires_grad for p in frozen.parameters())
    last = build_backbone(path, finetune="unfrozen_last_layer")
    trainable = {n for n, p in last.named_parameters() if p.requires_grad}
    last_layer = "encoder.layers.2." if family == "whisper" else "model.encoder.layers.2."
    assert trainable and all(n.startswith(last_layer) or "encoder.layer_norm." in n for n in trainable)
    assert any(n.startswith(last_layer) for n in trainable)
    full = build_backbone(path, finetune="unfrozen")
    trainable = {n for n, p in full.named_parameters() if p.requires_grad}
    assert not any("feature_extractor" in n or "embed_positions" in n for n in trainable)
    assert any(".layers.0." in n for n in trainable)
    wav, lengths = padded_batch()
    hidden, _, _ = last(wav, lengths)
    before, last_input, _, mask = last.forward_until_last(wav, lengths)
    torch.testing.assert_close(torch.cat([before, last.run_last_layer(last_input, mask)[None]]), hidden)


def test_random_init_from_config_and_bad_names(folders):
    a = build_backbone(str(folders["hubert"]), random_init=True)
    b = build_backbone(str(folders["hubert"]))
    assert a.weights_id.startswith("random:") and not torch.equal(
        a.model.encoder.layers[0].attention.q_proj.weight, b.model.encoder.layers[0].attention.q_proj.weight)
    with pytest.raises(TrustSerError, match="unknown --pretrain_model 'nope'"):
        build_backbone("nope")
    with pytest.raises(TrustSerError, match="--tiny applies to the built-in names only"):
        build_backbone(str(folders["hubert"]), random_init=True, tiny=True)
    (folders["hubert"].parent / "bert").mkdir()
    (folders["hubert"].parent / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(TrustSerError, match="'bert' model; supported Hugging Face families"):
        build_backbone(str(folders["hubert"].parent / "bert"))


def test_run_folder_names_are_file_system_safe(folders):
    assert backbone_dir_name("wavlm") == "wavlm"
    assert backbone_dir_name("microsoft/wavlm-large") == "microsoft--wavlm-large"
    assert backbone_dir_name(str(folders["whisper"])) == "tiny-whisper"
    assert backbone_dir_name(str(folders["whisper"]) + "/") == "tiny-whisper"


@pytest.mark.slow
def test_unreachable_hub_fails_fast_in_one_line():
    """HF_HUB_OFFLINE unset, no network (this machine): one quick check, then the one-line error."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: unreachable even where a network exists
    env["HF_HOME"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / "trust-ser-empty-hf-home")
    code = "from model.backbones import build_backbone; build_backbone('{}')"
    for name in ("wavlm", "facebook/hubert-base-ls960"):
        result = subprocess.run([sys.executable, "-c", code.format(name)], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert "TrustSerError" in lines[-1] and "hub is unreachable" in lines[-1]
        assert len(lines) <= 12, result.stderr  # a traceback, no retry warnings
