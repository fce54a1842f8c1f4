"""End to end on the synthetic corpus: every stage script run once as a subprocess, outputs checked by number."""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from synthetic_project import call_script, load_script, make_project, run_script
from utils.core.errors import TrustSerError
from utils.core.io import write_wav
from utils.trust.calibration import brier_score, expected_calibration_error, read_probabilities
from utils.trust.parity import fairness_report
from utils.training.metrics import classification_scores
from utils.runs.cli import base_parser
from utils.training.pipeline import finetune_command
from utils.runs.identity import RunConfig

FLAGS = ["--dataset", "demo", "--pretrain_model", "apc", "--random_init", "--tiny", "--device", "cpu",
         "--learning_rate", "0.005", "--downstream_model", "cnn", "--num_epochs", "1", "--num_layers", "3",
         "--conv_layers", "2", "--pooling", "mean", "--hidden_size", "32", "--batch_size", "8"]
RUN = "lr0005_ep1_cnn_conv2_hid32_mean_frozen_tiny_randinit_bs8"
CLASS_NAMES = ["neu", "sad", "ang", "hap"]      # the demo corpus' classes, in class-index order
N_TEST = 80    # 2 test speakers x 4 emotions x 10 utterances
RUN_CONFIG = RunConfig(dataset="demo", pretrain_model="apc", random_init=True, tiny=True, learning_rate=0.005,
                       num_epochs=1, conv_layers=2, pooling="mean", hidden_size=32, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    config = make_project(root, utts_per_emotion=10)
    call_script("experiment/finetune_single_thread.py", *FLAGS, "--config", str(config))
    return config, root / "project"


def _flags(config):
    return [*FLAGS, "--config", str(config)]


@pytest.mark.slow
def test_five_fold_finetune_writes_everything_and_beats_chance(project):
    _, out = project
    run_dir = out / "finetune" / "demo" / "apc" / RUN
    for fold in range(1, 6):
        assert (run_dir / f"fold_{fold}.pt").is_file()
        assert not (run_dir / f"fold_{fold}_backbone.pt").exists()      # frozen: only the head is saved
        best = json.loads((run_dir / f"fold_{fold}.json").read_text())["best"]
        preds = pd.read_csv(run_dir / f"fold_{fold}_test_predictions.csv")
        assert len(preds) == best["num_test"] == N_TEST
        assert list(preds.columns) == ["key", "speaker", "gender", "label", "prediction",
                                       *(f"prob_{name}" for name in CLASS_NAMES)]
        assert set(preds.label) == set(CLASS_NAMES) and set(preds.prediction) <= set(CLASS_NAMES)   # as predict.py
        np.testing.assert_allclose(preds.filter(like="prob_").sum(axis=1), 1.0, atol=1e-4)
        assert best["uar"] == pytest.approx(100 * np.mean([(preds.prediction[preds.label == c] == c).mean()
                                                           for c in CLASS_NAMES]), rel=1e-5)
    results = json.loads((run_dir / "results.json").read_text())
    assert sorted(k for k in results if k.isdigit()) == ["1", "2", "3", "4", "5"]
    uar = results["average"]["uar"]
    print(f"1-epoch 5-fold test UAR with a random-init tiny APC backbone: {uar:.1f}% (chance 25%)")
    assert uar > 35.0
    assert results["std"]["uar"] == pytest.approx(np.std([results[str(f)]["uar"] for f in range(1, 6)]), rel=1e-5)
    assert results["1"]["weights"] == "random:apc:tiny:seed0"


@pytest.mark.slow
def test_original_readme_command_parses_and_explains_what_is_missing(tmp_path):
    """The README's training command, verbatim from experiment/, ends in one line naming the next step."""
    config = tmp_path / "config.yml"
    config.write_text(f"data_dir:\n  iemocap: {tmp_path}\nproject_dir: {tmp_path / 'out'}\n")
    proc = run_script("experiment/finetune_single_thread.py", "--pretrain_model", "apc", "--dataset", "iemocap",
                      "--learning_rate", "0.0005", "--downstream_model", "cnn", "--num_epochs", "30",
                      "--num_layers", "3", "--conv_layers", "2", "--pooling", "mean", "--hidden_size", "128",
                      "--config", str(config), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "iemocap_fold1.json not found" in proc.stderr
    assert proc.stderr.strip().endswith(f"run first: python3 train_split_gen/iemocap.py --config {config}")


def test_split_command_names_each_corpus_script():
    from utils.data.corpora import split_command
    assert split_command("crema_d") == "python3 train_split_gen/crema-d.py"
    assert split_command("crema_d_complete") == "python3 train_split_gen/crema-d.py"     # reads crema_d's splits
    assert split_command("msp-podcast") == "python3 train_split_gen/msp-podcast.py"
    assert split_command("demo") == "python3 train_split_gen/demo.py --generate"
    for name in ("iemocap", "crema_d", "msp-improv", "msp-podcast", "meld", "ravdess", "demo"):
        assert (Path(__file__).resolve().parents[1] / split_command(name).split()[1]).is_file(), name


def model_predictions(config, fold: int) -> pd.DataFrame:
    """The trained model's test predictions recomputed here from its checkpoint (the path fairness no longer takes)."""
    from utils.data.utterances import load_fold
    from utils.runs.paths import finetune_folder
    from utils.training.pipeline import load_trained, make_source
    from utils.training.loop import evaluate

    project = str(config.parent / "project")
    backbone, head = load_trained(RUN_CONFIG, finetune_folder(project, RUN_CONFIG), fold, torch.device("cpu"), 4)
    source = make_source(RUN_CONFIG, backbone, torch.device("cpu"), project, grad_backbone=False)
    test = source.prepare(load_fold(project, "demo", fold)["test"])
    result = evaluate(head, backbone, source, test, 32, 4)
    return pd.DataFrame({"key": [u.key for u in test], "speaker": [u.speaker for u in test],
                         "gender": [u.gender for u in test], "label": [u.label for u in test],
                         "prediction": result.predictions})


@pytest.mark.slow
def test_fairness_from_the_saved_predictions_equals_the_model_path(project):
    config, out = project
    call_script("trustworthy/fairness/fairness_evaluation.py", *_flags(config), "--bootstrap", "50")
    results = json.loads((out / "fairness" / "demo" / "apc" / RUN / "results.json").read_text())
    for fold in ("1", "3"):
        preds = model_predictions(config, int(fold))
        saved = pd.read_csv(out / "finetune" / "demo" / "apc" / RUN / f"fold_{fold}_test_predictions.csv",
                            dtype={"speaker": str, "gender": str})
        assert sorted(zip(preds.key, preds.prediction.map(CLASS_NAMES.__getitem__))) == \
            sorted(zip(saved.key, saved.prediction))
        for attr in ("speaker", "gender"):
            expected = fairness_report(preds.label, preds.prediction, preds[attr], n_bootstrap=0, seed=0)
            got = results[fold][attr]
            for metric in ("statistical_parity", "equality_of_opportunity", "demographic_parity"):
                assert got[metric] == pytest.approx(expected[metric], rel=1e-5, abs=1e-9)
                assert 0.0 <= got[metric] <= 1.0
            low, high = got["ci95"]["statistical_parity"]
            assert low <= high
    assert results["average"]["gender"]["statistical_parity"] == pytest.approx(
        np.mean([results[str(f)]["gender"]["statistical_parity"] for f in range(1, 6)]), rel=1e-5)


@pytest.mark.slow
def test_fgsm_hits_the_snr_and_a_strong_attack_beats_a_weak_one(project):
    config, out = project
    rates = {}
    for snr in ("5", "60"):
        call_script("trustworthy/safety/adversarial_attack.py", *_flags(config), "--attack_method", "fgsm",
                    "-snr", snr, "--folds", "1,2")
        results = json.loads((out / "attack" / "fgsm" / snr / "demo" / "apc" / RUN / "results.json").read_text())
        for fold in ("1", "2"):
            assert results[fold]["measured_snr_db"] == pytest.approx(float(snr), abs=0.1)
            assert results[fold]["num_attacked"] > 0
        rates[snr] = results["average"]["success_rate"]
    print(f"FGSM success rate: {rates['5']:.1f}% at 5 dB vs {rates['60']:.1f}% at 60 dB")
    assert rates["5"] > rates["60"]


@pytest.mark.slow
def test_fgsm_attacks_what_the_finetuned_model_got_right_and_fp32_agrees_on_cpu(project):
    """The clean predictions are the finetune stage's test predictions (read from the feature cache); --fp32
    recomputes them live, which on CPU (fp32 either way) attacks the same utterances with the same outcome."""
    config, out = project
    attack = out / "attack" / "fgsm" / "30" / "demo" / "apc" / RUN
    preds = pd.read_csv(out / "finetune" / "demo" / "apc" / RUN / "fold_1_test_predictions.csv")
    runs = {}
    for extra in ([], ["--fp32", "--overwrite"]):
        call_script("trustworthy/safety/adversarial_attack.py", *_flags(config), "-snr", "30", "--folds", "1", *extra)
        runs[" ".join(extra)] = json.loads((attack / "results.json").read_text())
    cached, live = runs[""]["1"], runs["--fp32 --overwrite"]["1"]
    assert cached["num_attacked"] == int((preds.label == preds.prediction).sum()) > 0
    labels, predictions = (preds[c].map(CLASS_NAMES.index).to_numpy() for c in ("label", "prediction"))
    assert cached["clean_uar"] == pytest.approx(classification_scores(labels, predictions, 4)["uar"], rel=1e-5)
    assert (live["num_attacked"], live["num_flipped"]) == (cached["num_attacked"], cached["num_flipped"])
    assert runs["--fp32 --overwrite"]["meta"]["attack"]["precision"] == "fp32"


@pytest.mark.slow
def test_privacy_trains_a_gender_head_on_fold_1(project):
    config, out = project
    call_script("trustworthy/privacy/gender_inference.py", *_flags(config))
    results = json.loads((out / "privacy" / "gender" / "demo" / "apc" / RUN / "results.json").read_text())
    assert list(k for k in results if k.isdigit()) == ["1"]
    history = json.loads((out / "privacy" / "gender" / "demo" / "apc" / RUN / "fold_1.json").read_text())
    assert len([k for k in history if k.isdigit()]) == 10                 # 10 epochs, as the original
    losses = [history[str(epoch)]["train"]["loss"] for epoch in range(10)]
    print(f"gender head train loss: {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < losses[0]                                          # the gender head does train
    # the test split is scored after training by every epoch's head (frozen backbone), which is then deleted
    best = history["best"]
    assert best["uar"] == history[str(best["best_epoch"])]["test"]["uar"]
    assert len({history[str(epoch)]["test"]["loss"] for epoch in range(10)}) == 10
    assert not list((out / "privacy" / "gender" / "demo" / "apc" / RUN).glob("fold_1_epoch_*"))
    preds = pd.read_csv(out / "privacy" / "gender" / "demo" / "apc" / RUN / "fold_1_test_predictions.csv")
    assert set(preds.label) == {"female", "male"} and list(preds.columns[-2:]) == ["prob_female", "prob_male"]
    assert 0.0 <= results["average"]["uar"] <= 100.0
    assert results["1"]["collapsed"] is (preds.prediction.nunique() == 1)
    assert results["meta"]["collapsed"] is results["1"]["collapsed"]
    probe = results["1"]["linear_probe"]
    assert probe["num_utterances"] == 400 and probe["n_splits"] == 5         # every utterance of fold 1's split file
    assert results["average"]["linear_probe"]["uar"] == probe["uar"]
    assert probe["uar"] == pytest.approx(direct_linear_probe(config), rel=1e-5)


def direct_linear_probe(config) -> float:
    """The linear probe recomputed here: the emotion head's pooled embeddings, scikit-learn, speaker-grouped CV."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from utils.data.utterances import load_fold
    from utils.runs.paths import finetune_folder
    from utils.training.pipeline import load_trained, make_source
    from utils.trust.privacy import pooled_embeddings

    project = str(config.parent / "project")
    backbone, head = load_trained(RUN_CONFIG, finetune_folder(project, RUN_CONFIG), 1, torch.device("cpu"), 4)
    source = make_source(RUN_CONFIG, backbone, torch.device("cpu"), project, grad_backbone=False)
    utts = [u for split in load_fold(project, "demo", 1).values() for u in source.prepare(split)]
    x = pooled_embeddings(head, source, utts, 32)
    y = np.array([u.gender == "M" for u in utts], dtype=int)
    groups = np.array([u.speaker for u in utts])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return 100 * balanced_accuracy_score(y, cross_val_predict(model, x, y, groups=groups,
                                                              cv=StratifiedGroupKFold(n_splits=5)))


@pytest.mark.slow
def test_sustainability_counts_flops_params_and_latency(project):
    config, out = project
    call_script("trustworthy/sustainability/sustainability.py", *_flags(config), "--repeats", "2",
                "--throughput_batch", "2")
    report = json.loads((out / "flops" / "demo" / "apc" / RUN / "gflops.json").read_text())
    assert report["gflops"] > report["backbone_gflops"] > 0 and report["head_gflops"] > 0
    assert report["gflops"] == pytest.approx(report["backbone_gflops"] + report["head_gflops"], rel=1e-5)
    assert report["params_total"] == report["params_backbone"] + report["params_head"]
    assert report["params_trainable"] == report["params_head"]            # frozen backbone
    assert report["latency_ms_median"] > 0 and report["throughput_audio_seconds_per_second"] > 0


@pytest.mark.slow
def test_trust_profile_plot_reads_the_runs(project):
    config, out = project
    call_script("trustworthy/plot_spider.py", "--config", str(config), "--dataset", "demo",
                "--output_dir", str(out / "profile"))
    pngs = sorted(p.name for p in (out / "profile").glob("*.png"))
    assert "compare.png" in pngs and len(pngs) >= 2
    assert "apc" in (out / "profile" / "trust_profile.md").read_text().lower()


def test_the_finetune_command_of_a_hint_describes_the_same_run():
    run = RunConfig(pretrain_path="/my models/wavlm", batch_size=32, tiny=True, protocol="original", hidden_size=64,
                    config="/a b/config.yml")
    argv = shlex.split(finetune_command(run))[2:]
    assert RunConfig.from_args(base_parser("").parse_args(argv)).defining_flags() == run.defining_flags()


def test_predict_takes_the_flags_of_a_trained_run_and_none_of_training():
    from utils.runs.cli import predict_parser
    listed = set(re.findall(r"--\w+", predict_parser("").format_help()))
    assert {"--config", "--pretrain_model", "--batch_size", "--folds", "--seeds", "--eval_batch_size"} <= listed
    assert not listed & {"--overwrite", "--aggregate_only", "--no_cache", "--cache_gb", "--memory_gb", "--skip_bad",
                         "--num_layers", "--norm", "--optimizer"}
    pasted = shlex.split(finetune_command(RUN_CONFIG))[2:] + ["--num_layers", "3", "--norm", "nonorm"]
    assert RunConfig.from_args(predict_parser("").parse_args(pasted)).defining_flags() == RUN_CONFIG.defining_flags()
    with pytest.raises(TrustSerError, match="unrecognized arguments: --overwrite"):
        predict_parser("").parse_args([*pasted, "--overwrite"])


def test_fix_it_commands_keep_the_config_given(tmp_path):
    from utils.core.config import DEFAULT_CONFIG
    from utils.core.errors import TrustSerError
    from utils.core.io import write_json
    from utils.data.utterances import load_fold
    config = "/my dir/c.yml"
    with pytest.raises(TrustSerError,
                       match=r"run first: python3 train_split_gen/demo.py --generate --config '/my dir/c.yml'$"):
        load_fold(tmp_path, "demo", 1, config)
    entry = ["spk01_neu_1", "demo_spk01", "F", "/data/spk01_neu_1.wav", "neu"]
    write_json(tmp_path / "train_split" / "demo_fold1.json", {"train": [entry], "dev": [entry], "test": [entry]})
    with pytest.raises(TrustSerError, match=r"run first: python3 preprocess_audio/preprocess_audio.py --dataset demo "
                                            r"--config '/my dir/c.yml'$"):
        load_fold(tmp_path, "demo", 1, config)
    command = shlex.split(finetune_command(RunConfig(config=config)))
    assert command[-2:] == ["--config", config] and Path(command[1]).is_file() and DEFAULT_CONFIG.is_file()


@pytest.mark.slow
def test_an_evaluation_without_checkpoint_names_the_folds_and_the_finetune_command(project):
    config, _ = project
    flags = _flags(config)
    flags[flags.index("--hidden_size") + 1] = "64"          # a run that was never trained
    for script, extra in (("trustworthy/safety/adversarial_attack.py", ["-snr", "45"]),
                          ("trustworthy/fairness/fairness_evaluation.py", ["--folds", "2"])):
        proc = run_script(script, *flags, *extra, check=False)
        assert proc.returncode == 2
        line = proc.stderr.strip()
        assert "\n" not in line and "hid64" in line and "finetune_single_thread.py" in line and "--hidden_size 64" in line
        assert "--batch_size 8" in line                     # not the default: it names the run folder too
    assert line.startswith("error: fold 2 of ") and " is not trained; train it first: " in line
    assert line.endswith(" --folds 2")


@pytest.mark.slow
def test_finetune_results_record_calibration_of_the_test_probabilities(project):
    _, out = project
    run_dir = out / "finetune" / "demo" / "apc" / RUN
    results = json.loads((run_dir / "results.json").read_text())
    folds = [read_probabilities(run_dir / f"fold_{f}_test_predictions.csv") for f in range(1, 6)]
    probs, labels = np.concatenate([p for p, _ in folds]), np.concatenate([y for _, y in folds])
    assert results["calibration"]["pooled"]["ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6)
    assert results["calibration"]["pooled"]["brier"] == pytest.approx(brier_score(probs, labels), abs=1e-6)
    assert results["calibration"]["pooled"]["num_utterances"] == 5 * N_TEST
    assert results["3"]["brier"] == pytest.approx(brier_score(*folds[2]), abs=1e-6)
    assert results["average"]["ece"] == pytest.approx(np.mean([results[str(f)]["ece"] for f in range(1, 6)]), abs=1e-6)


@pytest.mark.slow
def test_robustness_stage_scores_live_perturbed_audio(project, tmp_path):
    config, out = project
    flags = [*_flags(config), "--folds", "1,2"]
    finetune = json.loads((out / "finetune" / "demo" / "apc" / RUN / "results.json").read_text())
    stage = load_script("trustworthy/robustness/robustness.py")
    asked = "white_100db,gain_0db,white_0db,babble_10db,reverb_800ms,telephone"
    stage.main([*flags, "--perturbations", asked])
    run_dir = out / "robustness" / "demo" / "apc" / RUN
    results = json.loads((run_dir / "results.json").read_text())
    for fold in "12":
        r = results[fold]
        assert r["clean"]["uar"] == pytest.approx(finetune[fold]["uar"], abs=1e-4)     # live clean = cached
        for name in ("white_100db", "gain_0db"):
            assert r["perturbations"][name]["changed_fraction"] == 0 and r["perturbations"][name]["uar_drop"] == 0
        assert r["perturbations"]["gain_0db"]["measured_snr_db"] is None        # nothing changed: no finite SNR
        assert r["perturbations"]["white_100db"]["measured_snr_db"] == pytest.approx(100, abs=0.2)
        assert r["perturbations"]["white_0db"]["measured_snr_db"] == pytest.approx(0, abs=0.2)
        assert r["perturbations"]["babble_10db"]["measured_snr_db"] == pytest.approx(10, abs=0.2)
        mean_drop = np.mean([p["uar_drop"] for p in r["perturbations"].values()])
        assert r["mean_uar_drop"] == pytest.approx(mean_drop, abs=1e-3)
    drops = [results[f]["perturbations"]["white_0db"]["uar_drop"] for f in "12"]
    assert results["average"]["perturbations"]["white_0db"]["uar_drop"] == pytest.approx(np.mean(drops), abs=1e-4)
    assert results["std"]["perturbations"]["white_0db"]["uar_drop"] == pytest.approx(np.std(drops), abs=1e-4)
    assert results["meta"]["robustness"]["perturbations"] == asked.split(",")

    noise_dir = tmp_path / "noises"
    write_wav(noise_dir / "hum.wav", 0.2 * np.sin(np.arange(8000) * 0.3), sr=8000)
    with pytest.raises(TrustSerError, match="fold_2.json was made with other settings .perturbations"):  # two lists
        stage.main([*flags, "--folds", "1", "--overwrite", "--noise_dir", str(noise_dir),
                    "--perturbations", "white_10db"])
    stage.main([*flags, "--overwrite", "--noise_dir", str(noise_dir), "--perturbations", "white_10db"])
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["1"]["perturbations"]) == ["noise_10db"]
    assert results["average"]["perturbations"]["noise_10db"]["measured_snr_db"] == pytest.approx(10, abs=0.2)
    assert results["meta"]["robustness"]["noise_files"] == 1
