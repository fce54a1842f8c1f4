"""--protocol original reproduces the original's procedure; the default protocol is unchanged."""
import json
import subprocess
import sys
from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.metrics import recall_score

from manifest_corpus import write_manifest_corpus
from model.backbones import Backbone
from synthetic_project import REPO, call_script, load_script, make_project
from utils.core.errors import TrustSerError
from utils.data.corpora import get_corpus, split_file_name
from utils.data.utterances import Utterance, load_fold, pad_waveforms
from utils.features import source as source_module
from utils.features.cache import CachedFeatures
from utils.features.source import AudioBank, LiveFeatures
from utils.training.finetune import reported_scores
from utils.training.metrics import classification_scores
from utils.training.pipeline import build_head, evaluation_source, make_backbone, make_source
from utils.training.protocol import PROTOCOLS, crop_seconds, fold_ids, protocol_of
from utils.reporting.report import run_folds
from utils.runs.identity import RunConfig
from utils.runs.paths import RunFolder, RunId
from utils.runs.stages import STAGE, Variant, measure
from utils.trust import safety
from utils.trust.safety import AttackSpec, attack_batch, attack_fold, attack_precision, attack_spec, clean_inputs
from utils.trust.sustainability import thop_style_gflops

CPU = torch.device("cpu")


def _run(**changes) -> RunConfig:
    return RunConfig(**{"dataset": "demo", "random_init": True, "tiny": True, "device": "cpu", **changes})


def _utterances(folder, n: int = 3) -> list[Utterance]:
    rng = np.random.default_rng(0)
    utts = []
    for i in range(n):
        path = folder / f"u{i}.wav"
        sf.write(path, 0.1 * rng.standard_normal(4000 + 1600 * i).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", "s", "female", str(path), i % 2))
    return utts


@pytest.mark.parametrize("model", ["tera", "wavlm"])
def test_original_trains_on_new_features_every_epoch_and_evaluates_on_cached_ones(tmp_path, model):
    utts = _utterances(tmp_path)
    features = {}
    for protocol in ("fixed", "original"):
        run = _run(pretrain_model=model, protocol=protocol)
        backbone = make_backbone(run, CPU)
        assert not any(p.requires_grad for p in backbone.parameters())
        source = make_source(run, backbone, CPU, str(tmp_path / "project"), grad_backbone=False)
        utts = source.prepare(utts)
        backbone.train()          # as train_epoch: two epochs' training batches
        epochs = [source.batch(utts)[0] for _ in range(2)]
        backbone.eval()           # as evaluate: two epochs' dev batches
        dev = [source.batch(utts)[0] for _ in range(2)]
        features[protocol] = epochs, dev
    (fixed_1, fixed_2), (fixed_dev, _) = features["fixed"]
    (orig_1, orig_2), (orig_dev_1, orig_dev_2) = features["original"]
    torch.testing.assert_close(fixed_1, fixed_2)                 # fixed: eval mode, cached
    assert (orig_1 - orig_2).abs().max() > 1e-3                  # original: dropout / LayerDrop in every epoch
    assert (orig_1 - fixed_1).abs().max() > 1e-3
    torch.testing.assert_close(orig_dev_1, orig_dev_2)           # dev: eval mode, the same in both epochs...
    torch.testing.assert_close(orig_dev_1, fixed_dev)            # ...and the same (cached) features as fixed


@pytest.mark.parametrize("no_cache", [False, True])
def test_original_evaluates_a_frozen_backbone_rounded_as_the_cache_with_or_without_it(tmp_path, no_cache):
    """--no_cache changes no number under original either: dev/test batches of a frozen backbone's live pass are
    rounded to fp16 as the cache's; only a trainable backbone's live evaluation is fp32 (fp32_live_evaluation)."""
    utts = _utterances(tmp_path)
    evaluated = {}
    for protocol in ("fixed", "original"):
        run = _run(pretrain_model="wavlm", protocol=protocol, no_cache=no_cache)
        backbone = make_backbone(run, CPU)
        source = make_source(run, backbone, CPU, str(tmp_path / protocol), grad_backbone=False)
        backbone.eval()
        evaluated[protocol], _ = source.batch(source.prepare(utts))
    assert torch.equal(evaluated["original"], evaluated["original"].half().float())
    assert torch.equal(evaluated["original"], evaluated["fixed"])
    run = _run(pretrain_model="wavlm", finetune="unfrozen", protocol="original")
    live = make_source(run, make_backbone(run, CPU), CPU, str(tmp_path / "unfrozen"), grad_backbone=True)
    assert type(live.eval_source) is LiveFeatures and live.eval_source.fp32 and not live.eval_source.round_like_cache


@pytest.mark.parametrize("conv_layers, hidden_size, protocol, expected", [
    (2, 128, "original", (2, 256)), (3, 128, "original", (3, 256)), (4, 64, "original", (2, 256)),
    (2, 128, "fixed", (2, 128)), (4, 64, "fixed", (4, 64))])
def test_head_shape(conv_layers, hidden_size, protocol, expected):
    run = _run(pretrain_model="apc", conv_layers=conv_layers, hidden_size=hidden_size, protocol=protocol)
    head = build_head(run, make_backbone(run, CPU), 4)
    convs = [m for m in head.model_seq if isinstance(m, torch.nn.Conv1d)]
    assert (len(convs), convs[0].out_channels) == expected
    assert all(c.out_channels == expected[1] for c in convs)


def _trainable(backbone) -> set[str]:
    return {n for n, p in backbone.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model", ["wav2vec2_0", "tera", "apc", "whisper_base"])
def test_original_finetune_reaches_only_wavlm_and_whisper_tiny(model):
    run = _run(pretrain_model=model, finetune="unfrozen")
    assert _trainable(make_backbone(run, CPU))                                     # fixed: fine-tuned
    backbone = make_backbone(run.but(protocol="original"), CPU)
    assert backbone.finetune == "frozen" and not _trainable(backbone)


@pytest.mark.parametrize("finetune", ["unfrozen", "unfrozen_last_layer"])
def test_other_audio_reads_a_backbone_the_original_kept_frozen_as_its_test_evaluation_did(finetune):
    """A backbone outside the original's reach is frozen whatever --finetune says: its test predictions came from
    the cache (fp16 hidden states), so predict.py's and the robustness stage's come from the same source."""
    run = _run(pretrain_model="tera", finetune=finetune, protocol="original")
    backbone = make_backbone(run, CPU)
    assert type(evaluation_source(run, backbone, AudioBank(2, skip_bad=False), CPU)) is CachedFeatures


def test_other_audio_is_scored_by_a_live_trainable_backbone_in_fp32_under_original_as_its_test_split(monkeypatch):
    """The original's unfrozen WavLM was scored in fp32 (Protocol.fp32_live_evaluation): the live pass of
    predict.py and the robustness stage runs outside frozen_pass (bf16 autocast on CUDA) under original, inside it
    under fixed."""
    entered = []
    monkeypatch.setattr(source_module, "frozen_pass", lambda *a: entered.append(1) or torch.no_grad())
    wav, lengths = 0.1 * torch.randn(2, 6000), torch.tensor([6000, 4000])
    for protocol, frozen_passes in (("original", 0), ("fixed", 1)):
        entered.clear()
        run = _run(pretrain_model="wavlm", finetune="unfrozen", protocol=protocol)
        backbone = make_backbone(run, CPU).eval()
        source = evaluation_source(run, backbone, AudioBank(2, skip_bad=False), CPU)
        hidden, _ = source.finish(source.fetch_waveforms(wav, lengths))
        assert type(source) is LiveFeatures and len(entered) == frozen_passes and not hidden.requires_grad


def test_original_wavlm_unfrozen_keeps_feature_projection_frozen():
    run = _run(pretrain_model="wavlm", finetune="unfrozen")
    fixed, original = _trainable(make_backbone(run, CPU)), _trainable(make_backbone(run.but(protocol="original"), CPU))
    projection = {n for n in fixed if "feature_projection" in n}
    assert projection and original == fixed - projection
    assert any("encoder.layers" in n for n in original)
    whisper = make_backbone(_run(pretrain_model="whisper_tiny", finetune="unfrozen", protocol="original"), CPU)
    assert any("layers" in n for n in _trainable(whisper))


def test_original_uar_is_sklearn_macro_recall_with_a_predicted_class_absent_from_the_labels():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 3, 1, 1, 0, 2]                      # class 3 is predicted but never a label
    original = classification_scores(y_true, y_pred, 4, protocol_of(_run(protocol="original")).uar_classes)
    fixed = classification_scores(y_true, y_pred, 4, protocol_of(_run()).uar_classes)
    assert original["uar"] == pytest.approx(100 * recall_score(y_true, y_pred, average="macro", zero_division=0))
    assert original["uar"] == pytest.approx(100 * (0.5 + 2 / 3 + 1 + 0) / 4)
    assert fixed["uar"] == pytest.approx(100 * (0.5 + 2 / 3 + 1) / 3)


@pytest.mark.parametrize("in_train_mode", [False, True])
def test_fgsm_gradient_mode(in_train_mode):
    run = _run(pretrain_model="tera", protocol="original" if in_train_mode else "fixed")
    backbone = make_backbone(run, CPU)
    head = build_head(run, backbone, 2).eval()
    backbone.eval()
    seen = []   # (grad enabled, backbone in train mode, head in train mode) of every forward pass
    backbone.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), m.training, head.training)))
    wav = 0.1 * torch.randn(2, 6000)
    lengths, labels = torch.tensor([6000, 4000]), torch.tensor([0, 1])
    attack = AttackSpec("fgsm", 30, gradient_in_train_mode=protocol_of(run).attack_gradient_in_train_mode)
    attack_batch(backbone, head, wav, lengths, labels, attack, torch.Generator().manual_seed(0))
    gradient = [mode for mode in seen if mode[0]]
    predictions = [mode for mode in seen if not mode[0]]
    assert gradient == [(True, in_train_mode, in_train_mode)]
    assert predictions and all(mode == (False, False, False) for mode in predictions)
    assert not backbone.training and not head.training


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    """One small synthetic project for the end-to-end runs (each writes its own run folders)."""
    return make_project(tmp_path_factory.mktemp("demo"), n_speakers=10, utts_per_emotion=2)


@pytest.mark.slow
def test_original_protocol_run_has_its_own_folder_and_records_the_protocol(demo_config):
    config, tmp_path = demo_config, demo_config.parent
    flags = ["--dataset", "demo", "--pretrain_model", "wav2vec2_0", "--random_init", "--tiny", "--device", "cpu",
             "--num_epochs", "1", "--conv_layers", "2", "--hidden_size", "32", "--batch_size", "8",
             "--finetune", "unfrozen", "--folds", "1", "--config", str(config)]
    call_script("experiment/finetune_single_thread.py", *flags, "--protocol", "original")
    runs = tmp_path / "project" / "finetune" / "demo" / "wav2vec2_0"
    run_dir = runs / "lr00002_ep1_cnn_conv2_hid32_att_unfrozen_tiny_randinit_origproto_bs8"
    assert [p.name for p in runs.iterdir()] == [run_dir.name]
    assert not (run_dir / "fold_1_backbone.pt").exists()      # the original never fine-tuned wav2vec2
    results = json.loads((run_dir / "results.json").read_text())
    assert results["meta"]["flags"]["protocol"] == "original"
    head = torch.load(run_dir / "fold_1.pt", weights_only=True)
    assert head["model_seq.0.weight"].shape[0] == 256                 # the original's head ignored --hidden_size

    call_script("trustworthy/sustainability/sustainability.py", *flags, "--protocol", "original",
                "--input_seconds", "1", "--repeats", "1", "--throughput_batch", "1")
    cost = json.loads((tmp_path / "project" / "flops" / "demo" / "wav2vec2_0" / run_dir.name / "gflops.json").read_text())
    run = _run(pretrain_model="wav2vec2_0", conv_layers=2, hidden_size=32, protocol="original")
    backbone = make_backbone(run, CPU).eval()
    # thop's multiply-adds of the backbone on 6 s plus the head on 50 frames, called GFLOPs (whatever --input_seconds)
    assert cost["gflops_original_style"] == pytest.approx(thop_style_gflops(backbone, build_head(run, backbone, 4), CPU))


@pytest.mark.parametrize("model", ["wav2vec2_0", "wavlm"])
def test_backbone_from_its_stored_front_end_equals_the_backbone(model):
    backbone = make_backbone(_run(pretrain_model=model), CPU)
    wav, lengths = 0.1 * torch.randn(2, 6000), torch.tensor([6000, 4000])
    with torch.no_grad():
        front, frame_lengths = backbone.front_end(wav, lengths)
        direct, _, mask = backbone(wav, lengths)
        from_front, _, mask_from_front = backbone.forward_from_front_end(front, frame_lengths)
    torch.testing.assert_close(from_front, direct)
    assert torch.equal(mask, mask_from_front)


def test_original_training_batches_are_the_padded_batch_features(tmp_path):
    """Not from the stored per-clip CNN output: the live backbone on the zero-padded batch (GroupNorm over it)."""
    run = _run(pretrain_model="wav2vec2_0", protocol="original")
    backbone = make_backbone(run, CPU)
    source = make_source(run, backbone, CPU, str(tmp_path / "project"), grad_backbone=False)
    utts = source.prepare(_utterances(tmp_path))
    wav, lengths = pad_waveforms([source.audio.get(u.path) for u in utts])
    backbone.train()
    features = {}
    for kind, mode in (("source", nullcontext), ("padded", backbone.padded_batch_features), ("per clip", nullcontext)):
        torch.manual_seed(5)    # the same dropout draws
        with torch.no_grad(), mode():
            features[kind] = source.batch(utts) if kind == "source" else backbone(wav, lengths)[::2]
    torch.testing.assert_close(features["source"][0], features["padded"][0])
    assert torch.equal(features["source"][1], features["padded"][1])
    assert (features["source"][0] - features["per clip"][0]).abs().max() > 1e-3


@pytest.mark.slow
def test_original_finetune_trains_on_padded_batches(demo_config, monkeypatch):
    config, project = demo_config, demo_config.parent / "project"
    entered = []    # the backbone's train mode at each padded batch
    padded = Backbone.padded_batch_features

    @contextmanager
    def spy(self):
        with padded(self):
            entered.append(self.training)
            yield self

    monkeypatch.setattr(Backbone, "padded_batch_features", spy)
    monkeypatch.setattr(sys, "argv", ["finetune", "--dataset", "demo", "--pretrain_model", "whisper_tiny",
                                      "--random_init", "--tiny", "--device", "cpu", "--num_epochs", "2",
                                      "--batch_size", "8", "--folds", "1", "--protocol", "original",
                                      "--config", str(config)])
    load_script("experiment/finetune_single_thread.py").main()
    train = load_fold(project, "demo", 1)["train"]
    assert entered == [True] * (2 * (len(train) // 8))          # every training batch, no dev/test batch
    results = json.loads(next((project / "finetune" / "demo" / "whisper_tiny").rglob("results.json")).read_text())
    assert results["meta"]["flags"]["protocol"] == "original" and results["1"]["uar"] >= 0


def test_a_one_split_corpus_has_five_seeded_runs_under_original_and_seeds_under_fixed():
    podcast, iemocap = get_corpus("msp-podcast"), get_corpus("iemocap")
    assert fold_ids(_run(dataset="msp-podcast", protocol="original"), podcast) == [1, 2, 3, 4, 5]
    assert fold_ids(_run(dataset="msp-podcast"), podcast) == [1]
    assert fold_ids(_run(dataset="msp-podcast", seeds=3), podcast) == [1, 2, 3]
    assert fold_ids(_run(dataset="iemocap", protocol="original"), iemocap) == [1, 2, 3, 4, 5]
    assert {split_file_name("msp-podcast", k) for k in range(1, 6)} == {"msp-podcast.json"}
    with pytest.raises(TrustSerError, match="iemocap has 5 folds"):
        fold_ids(_run(dataset="iemocap", seeds=2), iemocap)
    with pytest.raises(TrustSerError, match="at least 1"):
        fold_ids(_run(dataset="msp-podcast", seeds=0), podcast)
    folds = subprocess.run([sys.executable, str(REPO / "scripts" / "corpus_folds.py"), "--dataset", "msp-podcast",
                            "--protocol", "original"], capture_output=True, text=True, check=True)
    assert folds.stdout.split() == ["1", "2", "3", "4", "5"]


def test_seeded_runs_over_one_split_are_averaged_and_resume(tmp_path):
    manifest = write_manifest_corpus(tmp_path, n_speakers=4, utts_per_emotion=1, split=True)
    config = tmp_path / "config.yml"
    config.write_text(f"project_dir: {tmp_path / 'project'}\n")
    load_script("train_split_gen/manifest.py").main(["--manifest", str(manifest), "--dataset", "mine",
                                                     "--config", str(config)])
    load_script("preprocess_audio/preprocess_audio.py").main(["--dataset", "mine", "--config", str(config)])
    flags = ["--dataset", "mine", "--pretrain_model", "apc", "--random_init", "--tiny", "--device", "cpu",
             "--num_epochs", "1", "--conv_layers", "1", "--hidden_size", "8", "--pooling", "mean", "--batch_size", "4",
             "--config", str(config)]
    finetune = load_script("experiment/finetune_single_thread.py").main
    finetune([*flags, "--seeds", "2"])
    run_dir = tmp_path / "project" / "finetune" / "mine" / "apc" / "lr00002_ep1_cnn_conv1_hid8_mean_frozen_tiny_randinit_bs4"
    heads = [torch.load(run_dir / f"fold_{k}.pt", weights_only=True) for k in (1, 2)]
    assert (heads[0]["model_seq.0.weight"] - heads[1]["model_seq.0.weight"]).abs().max() > 1e-3   # seeds 8 and 16
    first = (run_dir / "fold_1.pt").stat().st_mtime_ns
    finetune([*flags, "--seeds", "3"])                                                  # trains run 3 only
    assert (run_dir / "fold_1.pt").stat().st_mtime_ns == first
    results = json.loads((run_dir / "results.json").read_text())
    uars = [results[k]["uar"] for k in ("1", "2", "3")]
    assert results["meta"]["folds_done"] == [1, 2, 3] and run_folds(RunFolder(run_dir), [1]) == [1, 2, 3]   # the report's
    assert results["average"]["uar"] == pytest.approx(np.mean(uars)) and results["std"]["uar"] == pytest.approx(np.std(uars))
    load_script("trustworthy/fairness/fairness_evaluation.py").main([*flags, "--seeds", "3", "--bootstrap", "0"])
    fairness = json.loads((tmp_path / "project" / "fairness" / "mine" / "apc" / run_dir.name / "results.json").read_text())
    assert fairness["meta"]["folds_done"] == [1, 2, 3]


@pytest.mark.parametrize("protocol", ["fixed", "original"])
def test_original_attacks_in_fp32_from_a_live_clean_pass(tmp_path, monkeypatch, protocol):
    run = _run(pretrain_model="tera", protocol=protocol)
    backbone = make_backbone(run, CPU).eval()
    head = build_head(run, backbone, 2).eval()
    utts = _utterances(tmp_path)
    cached, autocasts = [], []
    monkeypatch.setattr(safety, "cached_predictions",
                        lambda *args: cached.append(1) or torch.tensor([u.label for u in utts]))
    monkeypatch.setattr(safety, "low_precision", lambda backbone, device: autocasts.append(device) or nullcontext())
    attack = attack_spec(run, "fgsm", 30, 10, fp32=False)
    test, audio, clean = clean_inputs(run, attack, backbone, head, utts, CPU, str(tmp_path / "project"), 2)
    result = attack_fold(backbone, head, test, audio, attack, CPU, 2, clean)
    original = protocol == "original"
    assert attack.fp32 == original and (clean is None) == original
    assert attack_precision(attack, torch.device("cuda")) == ("fp32" if original else "bf16 autocast")
    assert bool(cached) != original and bool(autocasts) != original     # original: no cache, no autocast
    assert result["num_test"] == len(utts)


def test_original_reports_zero_when_no_dev_uar_exceeds_zero():
    scores = {"uar": 40.0, "acc": 50.0, "macro_f1": 30.0}
    assert reported_scores(_run(protocol="original"), scores, 0.0) == {"uar": 0.0, "acc": 0.0, "macro_f1": 0.0,
                                                                      "no_epoch_above_0": True}
    assert reported_scores(_run(protocol="original"), scores, 12.5) == scores
    assert reported_scores(_run(), scores, 0.0) == scores


@pytest.mark.parametrize("protocol, seconds", [("fixed", 3), ("original", 6)])
def test_original_crops_at_6_seconds_whatever_audio_duration_says(tmp_path, protocol, seconds):
    path = tmp_path / "long.wav"
    sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(8 * 16000).astype(np.float32), 16000)
    run = _run(pretrain_model="apc", audio_duration=3, protocol=protocol)
    backbone = make_backbone(run, CPU)
    source = make_source(run, backbone, CPU, str(tmp_path / "project"), grad_backbone=False)
    assert crop_seconds(run, backbone) == seconds and len(source.audio.get(str(path))) == seconds * 16000


def test_the_profile_reads_the_fairness_group_of_the_runs_protocol(tmp_path):
    fairness = {"speaker": {"statistical_parity": 0.2}, "gender": {"statistical_parity": 0.05}}
    runs = {"fixed": RunId("demo", "apc", "lr00002_ep1_cnn_conv2_hid32_att_frozen"),
            "original": RunId("demo", "apc", "lr00002_ep1_cnn_conv2_hid32_att_frozen_origproto")}
    for protocol, run in runs.items():
        for stage, result in (("uar", {"average": {"uar": 50.0}, "meta": {"flags": {"protocol": protocol}}}),
                              ("fairness", {"average": fairness})):
            path = STAGE[stage].result_path(tmp_path, run)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))
    by_protocol = {p: measure(STAGE["fairness"], tmp_path, run).value for p, run in runs.items()}
    assert by_protocol == pytest.approx({"fixed": 20.0, "original": 5.0})
    assert {p: PROTOCOLS[p].fairness_group for p in runs} == {"fixed": "speaker", "original": "gender"}
    chosen = {p: measure(STAGE["fairness"], tmp_path, run, Variant(fairness_group="speaker")).value
              for p, run in runs.items()}
    assert chosen == pytest.approx({"fixed": 20.0, "original": 20.0})
