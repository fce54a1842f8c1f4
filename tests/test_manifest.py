"""Any corpus through a manifest, any Hugging Face encoder folder, predictions on new audio, sustainability
without a checkpoint: the synthetic corpus written as a manifest (a third of it 44.1 kHz stereo FLAC), real
scripts as subprocesses, numbers checked."""
import json
import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from hf_models import save_tiny_model
from manifest_corpus import write_manifest_corpus
from synthetic_project import ENV, REPO, call_script, load_script, run_script
from utils.data.audio import audio_info
from utils.core.errors import TrustSerError
from utils.data.manifest import manifest_corpus, speaker_column
from utils.data.splits import dev_groups, kfold, last_fifth

APC = ["--pretrain_model", "apc", "--random_init", "--tiny", "--device", "cpu", "--num_epochs", "1",
       "--conv_layers", "1", "--hidden_size", "16", "--pooling", "mean", "--batch_size", "8", "--learning_rate",
       "0.005"]
RUN = "lr0005_ep1_cnn_conv1_hid16_mean_frozen_tiny_randinit_bs8"


def _config(root):
    config = root / "config.yml"
    config.write_text(f"project_dir: {root / 'project'}\n")  # no data_dir: the manifest holds the paths
    return config


@pytest.fixture(scope="module")
def folds(tmp_path_factory):
    """6 speakers, 3 speaker folds, 48 files; preprocessed and trained (tiny APC, 1 epoch)."""
    root = tmp_path_factory.mktemp("manifest")
    manifest, config = write_manifest_corpus(root), _config(root)
    call_script("train_split_gen/manifest.py", "--manifest", str(manifest), "--dataset", "mine", "--num_folds", "3",
                "--config", str(config))
    call_script("preprocess_audio/preprocess_audio.py", "--dataset", "mine", "--config", str(config))
    flags = ["--dataset", "mine", *APC, "--config", str(config)]
    call_script("experiment/finetune_single_thread.py", *flags)
    return root, config, flags


@pytest.mark.slow
def test_speaker_folds_are_balanced_by_gender(folds):
    """Test speakers as scikit-learn's StratifiedKFold by gender (the reference); dev one speaker per gender."""
    root, _, _ = folds
    split_dir = root / "project" / "train_split"
    corpus = json.loads((split_dir / "mine.corpus.json").read_text())
    assert corpus["class_names"] == ["ang", "hap", "neu", "sad"] and corpus["num_folds"] == 3
    speakers = [f"spk{i:02d}" for i in range(1, 7)]
    genders = ["F", "M"] * 3                                      # the synthetic corpus alternates
    reference = StratifiedKFold(3).split(speakers, genders)
    for fold, (_, test_idx) in enumerate(reference, start=1):
        split = json.loads((split_dir / f"mine_fold{fold}.json").read_text())
        by_split = {name: sorted({e[1] for e in entries}) for name, entries in split.items()}
        test = [speakers[i] for i in test_idx]
        train = [s for s in speakers if s not in test]
        assert by_split == {"test": test, "dev": train[-2:], "train": train[:-2]}
        assert {e[2] for e in split["dev"]} == {e[2] for e in split["test"]} == {"F", "M"}
        assert sum(len(v) for v in split.values()) == 48


@pytest.mark.slow
def test_preprocessed_audio_is_16k_mono_from_stereo_flac(folds):
    root, _, _ = folds
    out = root / "project" / "audio" / "mine"
    flac = sorted(out.glob("*.flac.wav"))
    assert len(list(out.glob("*.wav"))) == 48 and len(flac) == 16
    assert audio_info(flac[0])[:2] == (16000, 1)


@pytest.mark.slow
def test_finetune_and_fairness_on_the_manifest_corpus(folds):
    root, config, flags = folds
    run_dir = root / "project" / "finetune" / "mine" / "apc" / RUN
    results = json.loads((run_dir / "results.json").read_text())
    assert sorted(k for k in results if k.isdigit()) == ["1", "2", "3"]
    call_script("trustworthy/fairness/fairness_evaluation.py", *flags, "--bootstrap", "0")
    fairness = json.loads((root / "project" / "fairness" / "mine" / "apc" / RUN / "results.json").read_text())
    assert fairness["1"]["gender"]["reason"] is None and fairness["1"]["gender"]["n_groups"] == 2


@pytest.mark.slow
def test_predict_equals_the_fold_models_test_predictions(folds):
    """predict.py reads the original 22.05 kHz mono / 44.1 kHz stereo FLAC files, not the preprocessed ones."""
    root, _, flags = folds
    (root / "corpus" / "broken.wav").write_bytes(b"not audio")
    run_dir = root / "project" / "finetune" / "mine" / "apc" / RUN
    for fold in (2,):
        out = root / f"preds{fold}.csv"
        proc = run_script("experiment/predict.py", *flags, "--audio", str(root / "corpus"), "--folds", str(fold),
                          "--output", str(out))
        assert "broken.wav" in proc.stderr and "1 unusable file(s) skipped (named above)" in proc.stderr
        preds = pd.read_csv(out)
        assert len(preds) == 48 and list(preds.columns) == ["path", "prediction", "prob_ang", "prob_hap",
                                                            "prob_neu", "prob_sad"]
        preds["key"] = preds.path.map(lambda p: "__".join(p.split("/")[-3:]))
        test = pd.read_csv(run_dir / f"fold_{fold}_test_predictions.csv").merge(preds, on="key")
        assert len(test) == 16
        for name in ("ang", "hap", "neu", "sad"):
            np.testing.assert_allclose(test[f"prob_{name}_x"], test[f"prob_{name}_y"], atol=2e-6)
    call_script("experiment/predict.py", *flags, "--audio", str(root / "corpus" / "spk01_F"),
                "--output", str(root / "all.csv"))
    every = pd.read_csv(root / "all.csv").set_index("path").filter(like="prob_")
    fold2 = pd.read_csv(root / "preds2.csv").set_index("path").filter(like="prob_").loc[every.index]
    assert len(every) == 8
    np.testing.assert_allclose(every.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(every.values - fold2.values).max() > 1e-4    # the average of 3 folds, not fold 2 alone


@pytest.mark.slow
def test_missing_checkpoints_name_the_finetune_command(folds):
    root, _, flags = folds
    flags = [*flags]
    flags[flags.index("--hidden_size") + 1] = "64"
    proc = run_script("experiment/predict.py", *flags, "--audio", str(root / "corpus"), check=False)
    assert proc.returncode == 2
    assert "folds 1, 2, 3 of " in proc.stderr and " are not trained; train them first: " in proc.stderr
    assert "--hidden_size 64" in proc.stderr and proc.stderr.strip().endswith("--folds 1,2,3")


@pytest.mark.slow
def test_a_fold_not_trained_is_named_with_the_trained_ones_before_any_work(folds, tmp_path):
    root, _, flags = folds
    result = next((root / "project" / "finetune").rglob("fold_2.json"))
    kept = result.read_bytes()
    result.unlink()
    messages = []
    try:
        for script, extra in (("experiment/predict.py", ["--audio", str(root / "corpus" / "spk01_F"), "--output",
                                                          str(tmp_path / "p.csv")]),
                              ("trustworthy/safety/adversarial_attack.py", ["-snr", "31"])):
            with pytest.raises(TrustSerError) as info:
                call_script(script, *flags, *extra)
            messages.append(str(info.value))
    finally:
        result.write_bytes(kept)
    for message in messages:
        assert message.startswith(f"fold 2 of {result.parent} is not trained; use the trained ones (--folds 1,3), or "
                                  f"train it first: ") and message.endswith(" --folds 2")
    assert not (tmp_path / "p.csv").exists() and not (root / "project" / "attack" / "fgsm" / "31").exists()


@pytest.mark.slow
def test_a_damaged_checkpoint_says_how_to_train_the_fold_again(folds, tmp_path):
    root, _, flags = folds
    head = next((root / "project" / "finetune").rglob("fold_2.pt"))
    kept = head.read_bytes()
    try:
        head.write_bytes(b"")                                   # e.g. a full disk when it was written
        with pytest.raises(TrustSerError) as info:
            call_script("experiment/predict.py", *flags, "--folds", "2", "--audio", str(root / "corpus" / "spk01_F"),
                        "--output", str(tmp_path / "p.csv"))
    finally:
        head.write_bytes(kept)
    message = str(info.value)
    assert message.startswith(f"{head} is not a readable checkpoint (the file is empty); to train the fold again: ")
    assert message.endswith("--overwrite --folds 2") and "finetune_single_thread.py" in message
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_sustainability_without_a_checkpoint(folds):
    root, _, flags = folds
    flags = [*flags]
    flags[flags.index("--hidden_size") + 1] = "64"          # never trained
    proc = run_script("trustworthy/sustainability/sustainability.py", *flags, "--repeats", "1",
                      "--throughput_batch", "1", "--input_seconds", "1")
    assert "no trained checkpoint" in proc.stderr
    report = json.loads(next((root / "project" / "flops" / "mine" / "apc").glob("*hid64*/gflops.json")).read_text())
    assert report["trained_checkpoint"] is False and report["gflops"] > report["backbone_gflops"] > 0
    assert report["params_trainable"] == report["params_head"] > 0
    flags[flags.index("--pretrain_model") + 1] = "whisper_tiny"
    with pytest.raises(TrustSerError, match=r"^--input_seconds 31: whisper_tiny takes clips of at most 30 s$"):
        call_script("trustworthy/sustainability/sustainability.py", *flags, "--input_seconds", "31")


@pytest.mark.slow
def test_scale_out_scripts_take_the_corpus_folds(folds):
    _, config, _ = folds
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_array.sh"), "--num_tasks", "--dataset", "mine",
                           "--config", str(config)], env={**ENV, "BACKBONES": "apc tera", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "6", proc.stderr                # 2 backbones x 3 folds


@pytest.mark.slow
def test_split_column_no_gender_label_subset_and_a_hugging_face_folder(tmp_path):
    """One fold from the split column, --labels in their order, no gender (gender metrics n/a), a tiny HuBERT
    folder as --pretrain_model with unfrozen_last_layer (feature cache of the lower layers); predict agrees."""
    manifest = write_manifest_corpus(tmp_path, n_speakers=4, utts_per_emotion=1, split=True, gender=False)
    config = _config(tmp_path)
    hubert = save_tiny_model("hubert", tmp_path / "my-hubert")
    call_script("train_split_gen/manifest.py", "--manifest", str(manifest), "--dataset", "mine",
                "--labels", "sad,ang,hap", "--config", str(config))
    split = json.loads((tmp_path / "project" / "train_split" / "mine.json").read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 6, "dev": 3, "test": 3}
    assert json.loads((tmp_path / "project" / "train_split" / "mine.corpus.json").read_text())["class_names"] == \
        ["sad", "ang", "hap"]
    call_script("preprocess_audio/preprocess_audio.py", "--dataset", "mine", "--config", str(config))
    flags = ["--dataset", "mine", "--pretrain_model", str(hubert), "--finetune", "unfrozen_last_layer",
             "--device", "cpu", "--num_epochs", "1", "--conv_layers", "1", "--hidden_size", "16", "--pooling",
             "mean", "--batch_size", "4", "--config", str(config)]
    call_script("experiment/finetune_single_thread.py", *flags)
    assert sorted(p.name for p in hubert.iterdir()) == ["config.json", "model.safetensors"]   # the cache is elsewhere
    run_dir = (tmp_path / "project" / "finetune" / "mine" / "my-hubert" /
               "lr00002_ep1_cnn_conv1_hid16_mean_unfrozen_last_layer_bs4")
    assert (run_dir / "fold_1_backbone.pt").is_file()
    assert sorted(p.name for p in hubert.iterdir()) == ["config.json", "model.safetensors"]   # the cache is elsewhere
    call_script("trustworthy/fairness/fairness_evaluation.py", *flags, "--bootstrap", "0")
    fairness = json.loads((tmp_path / "project" / "fairness" / "mine" / "my-hubert" / run_dir.name /
                           "results.json").read_text())
    assert fairness["1"]["gender"]["reason"] == "no group labels" and fairness["1"]["speaker"]["reason"]
    call_script("experiment/predict.py", *flags, "--audio", str(tmp_path / "corpus" / "spk04_M"),
                "--output", str(tmp_path / "p.csv"))
    preds = pd.read_csv(tmp_path / "p.csv")
    preds["key"] = preds.path.map(lambda p: "__".join(p.split("/")[-3:]))
    test = pd.read_csv(run_dir / "fold_1_test_predictions.csv").merge(preds, on="key")
    assert len(test) == 3 and len(preds) == 4    # spk04's neutral file is not among the --labels
    for name in ("sad", "ang", "hap"):
        np.testing.assert_allclose(test[f"prob_{name}_x"], test[f"prob_{name}_y"], atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda t: t.drop(columns="speaker"), r"has no column\(s\) speaker \(needed: path,label,speaker"),
    (lambda t: t.assign(path=["nowhere/a.wav", "nowhere/b.wav"] + list(t.path[2:])),
     "2 of 48 audio files do not exist (.*nowhere/a.wav, .*nowhere/b.wav)"),
    (lambda t: t.assign(label=["fear"] + list(t.label[1:])), r"fewer examples than the 3 folds: fear \(1\)"),
    (lambda t: t.assign(speaker="spk01", gender="F"), "a single speaker"),
    (lambda t: pd.concat([t, t.iloc[[4]].assign(label="sad")]),
     r"1 file\(s\) listed more than once: .*spk01_F/spk01_neu_1.wav \(lines 6, 50\)$"),
    (lambda t: t.assign(gender=["F", "M"] + list(t.gender[2:])), r"a speaker with more than one gender \(spk01: F, M\)"),
    (lambda t: t.assign(split=["train"] * 3 + ["training", ""] + ["test"] * 43),
     r"split values must be train, dev or test, found '', 'training' \(first: line 5\)$"),
    (lambda t: t.assign(label="ang"), r"every row has the label 'ang'; emotion recognition needs at least 2 classes$"),
])
def test_bad_manifests_fail_in_one_line(tmp_path_factory, edit, message):
    root = tmp_path_factory.getbasetemp() / "bad_manifest"
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        write_manifest_corpus(root)
    bad = root / "bad.csv"
    edit(pd.read_csv(manifest)).to_csv(bad, index=False)
    with pytest.raises(TrustSerError, match=message):
        manifest_corpus(bad, "mine", 3, None)


def test_labels_left_out_are_counted(tmp_path, caplog):
    manifest = write_manifest_corpus(tmp_path, n_speakers=4, utts_per_emotion=1, gender=False)
    with caplog.at_level(logging.INFO):
        found = manifest_corpus(manifest, "mine", 2, ["sad", "ang"])
    assert len(found.items) == 8
    assert "left out 8 row(s) whose label is not in --labels (hap 4, neu 4)" in caplog.text
    with pytest.raises(TrustSerError, match=r"^--labels sad,ang,sad: sad given twice$"):
        manifest_corpus(manifest, "mine", 2, ["sad", "ang", "sad"])        # a class of two label indices
    with pytest.raises(TrustSerError, match=r"^--labels sad: emotion recognition needs at least 2 classes$"):
        manifest_corpus(manifest, "mine", 2, ["sad"])


def test_without_gender_the_folds_are_the_originals_protocol():
    script = load_script("train_split_gen/manifest.py")
    speakers = [f"s{i:02d}" for i in range(1, 11)]
    folds = script.speaker_folds(dict.fromkeys(speakers, ""), 5)
    assert folds == kfold(speakers, 5, last_fifth)
    assert [f.dev for f in folds[:2]] == [("s09", "s10"), ("s09", "s10")]


def test_speaker_ids_grouped_by_gender_give_mixed_dev_and_test():
    """s01-s05 female, s06-s10 male: KFold over the sorted IDs would test and validate on one gender."""
    script = load_script("train_split_gen/manifest.py")
    genders = {f"s{i:02d}": "F" if i <= 5 else "M" for i in range(1, 11)}
    folds = script.speaker_folds(genders, 5)
    assert [f.test for f in folds] == [(f"s{i:02d}", f"s{i + 5:02d}") for i in range(1, 6)]
    assert folds[0].dev == ("s05", "s10") and folds[4].dev == ("s04", "s09")
    assert all(len(f.train) == 6 and {genders[s] for s in f.train} == {"F", "M"} for f in folds)


@pytest.mark.parametrize("strata, n_dev, dev", [
    ("FFFM", 1, "c"),             # the single male speaker stays in train
    ("FFFFFFFFMM", 2, "hj"),      # one of each, the last of each gender
    ("FFFFFFFFMMMM", 3, "ghl"),   # the extra one from the gender with most speakers left in train
    ("FM", 1, "b"),               # no gender can spare one: the last speaker, as the original
])
def test_dev_speakers_are_chosen_per_gender(strata, n_dev, dev):
    train = [chr(ord("a") + i) for i in range(len(strata))]
    assert "".join(dev_groups(train, list(strata), n_dev)) == dev


def test_too_few_speakers_per_gender_fall_back_to_kfold(caplog):
    script = load_script("train_split_gen/manifest.py")
    genders = {"s1": "F", "s2": "F", "s3": "M", "s4": "M"}
    with caplog.at_level(logging.WARNING):
        folds = script.speaker_folds(genders, 3)
    assert folds == kfold(sorted(genders), 3, last_fifth) and "no gender has 3 speakers (f 2, m 2)" in caplog.text


def test_group_by_columns_must_be_speaker_level(tmp_path):
    table = pd.read_csv(write_manifest_corpus(tmp_path, n_speakers=4, utts_per_emotion=1))
    table["age_group"] = table.speaker.map({"spk01": "young", "spk02": "old", "spk03": "old", "spk04": "young"})
    table["take"] = range(len(table))
    table.to_csv(tmp_path / "more.csv", index=False)
    config = _config(tmp_path)
    load_script("train_split_gen/manifest.py").main(["--manifest", str(tmp_path / "more.csv"), "--dataset", "more",
                                                     "--num_folds", "2", "--config", str(config)])
    project = tmp_path / "project"
    assert speaker_column(project, "more", "age_group") == {"spk01": "young", "spk02": "old", "spk03": "old",
                                                            "spk04": "young"}
    with pytest.raises(TrustSerError, match=r"^--group_by take: column 'take' of manifest .*more.csv varies within "
                                            r"a speaker \(spk01: 0, 1, 2, 3\); fairness groups need one value"):
        speaker_column(project, "more", "take")
    with pytest.raises(TrustSerError, match=r"has no column 'accent' \(its extra columns: age_group;"):
        speaker_column(project, "more", "accent")
    with pytest.raises(TrustSerError, match="iemocap is a built-in corpus"):
        speaker_column(project, "iemocap", "age_group")


@pytest.mark.slow
def test_a_built_in_name_is_refused_by_the_script(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,speaker\na.wav,x,s\n")
    proc = run_script("train_split_gen/manifest.py", "--manifest", str(manifest), "--dataset", "iemocap",
                      "--config", str(_config(tmp_path)), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --dataset iemocap is a built-in corpus; give the manifest corpus " \
                                  "another name"
