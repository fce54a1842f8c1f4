"""The README's chain on a researcher's own corpus: a manifest whose speaker IDs are grouped by gender (s01-s05
female, s06-s10 male), an age-group column, a stereo FLAC and 22.05 kHz WAV files among the audio. Every stage
runs in process through its script's main(argv): split -> preprocess -> finetune (tiny WavLM, 2 folds) ->
fairness (--group_by age_group) -> safety -> privacy (fold 1) -> sustainability -> plot_spider -> report."""
import ast
import csv
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from manifest_corpus import write_manifest_corpus
from synthetic_project import REPO, call_script
from utils.data.audio import audio_info
from utils.trust.parity import multiclass_statistical_parity

MODEL = ["--pretrain_model", "wavlm", "--random_init", "--tiny", "--device", "cpu", "--num_epochs", "2",
         "--conv_layers", "1", "--hidden_size", "16", "--pooling", "mean", "--batch_size", "8",
         "--learning_rate", "0.005"]
RUN = Path("wavlm") / "lr0005_ep2_cnn_conv1_hid16_mean_frozen_tiny_randinit_bs8"
FEMALE, MALE = [f"s{i:02d}" for i in range(1, 6)], [f"s{i:02d}" for i in range(6, 11)]


def grouped_manifest(root: Path) -> Path:
    """The synthetic corpus (speakers alternate F, M) renamed so that the IDs are grouped by gender, with an
    age_group per speaker and a take number that varies within a speaker."""
    table = pd.read_csv(write_manifest_corpus(root, n_speakers=10, utts_per_emotion=1))
    order = sorted(table.speaker.unique(), key=lambda s: (table.gender[table.speaker == s].iloc[0], s))
    table["speaker"] = table.speaker.map(dict(zip(order, FEMALE + MALE)))
    table["age_group"] = table.speaker.map(lambda s: "under_40" if int(s[1:]) % 2 else "over_40")
    table["take"] = range(len(table))
    manifest = root / "yours.csv"
    table.to_csv(manifest, index=False)
    return manifest


CHAIN = ["train_split_gen/manifest.py", "preprocess_audio/preprocess_audio.py", "experiment/finetune_single_thread.py",
         "trustworthy/fairness/fairness_evaluation.py", "trustworthy/safety/adversarial_attack.py",
         "trustworthy/privacy/gender_inference.py", "trustworthy/sustainability/sustainability.py",
         "trustworthy/plot_spider.py", "trustworthy/report.py"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("your_corpus")
    previous = os.umask(0o022)
    try:
        manifest, config = grouped_manifest(root), root / "config.yml"
        config.write_text(f"project_dir: {root / 'project'}\n")
        flags = ["--dataset", "yours", *MODEL, "--config", str(config)]
        call_script("train_split_gen/manifest.py", "--manifest", str(manifest), "--dataset", "yours", "--config",
                    str(config))
        call_script("preprocess_audio/preprocess_audio.py", "--dataset", "yours", "--config", str(config))
        call_script("experiment/finetune_single_thread.py", *flags, "--folds", "1,2")
        call_script("trustworthy/fairness/fairness_evaluation.py", *flags, "--folds", "1,2", "--bootstrap", "0",
            "--group_by", "age_group")
        call_script("trustworthy/safety/adversarial_attack.py", *flags, "--folds", "1,2")
        call_script("trustworthy/privacy/gender_inference.py", *flags, "--bootstrap", "50")      # fold 1, the default
        call_script("trustworthy/sustainability/sustainability.py", *flags, "--repeats", "1", "--throughput_batch", "1",
            "--input_seconds", "1")
        project = root / "project"
        call_script("trustworthy/plot_spider.py", "--dataset", "yours", "--config", str(config), "--output_dir",
            str(root / "profile"))
        call_script("trustworthy/report.py", "--dataset", "yours", "--config", str(config))
    finally:
        os.umask(previous)
    return root, project


def results(project: Path, stage: str) -> dict:
    return json.loads((project / stage / "yours" / RUN / "results.json").read_text())


def test_every_script_of_the_chain_runs_as_a_command():
    """The chain runs in process through main(argv); a user runs the files, which need their __main__ guard."""
    for script in CHAIN:
        tree = ast.parse((REPO / script).read_text())
        guards = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        assert [ast.unparse(g.body[0]) for g in guards] == ["run_main(main)"], script


@pytest.mark.slow
def test_folds_hold_both_genders_in_dev_and_test(chain):
    _, project = chain
    for fold in range(1, 6):
        split = json.loads((project / "train_split" / f"yours_fold{fold}.json").read_text())
        for name in ("dev", "test"):
            speakers = {e[1] for e in split[name]}
            assert len(speakers & set(FEMALE)) == 1 and len(speakers & set(MALE)) == 1, (fold, name, speakers)
        assert {e[2] for e in split["dev"]} == {e[2] for e in split["test"]} == {"F", "M"}


@pytest.mark.slow
def test_audio_was_made_16k_mono(chain):
    _, project = chain
    files = sorted((project / "audio" / "yours").glob("*.wav"))
    assert len(files) == 40 and {audio_info(f)[:2] for f in files} == {(16000, 1)}


@pytest.mark.slow
def test_every_stage_has_results(chain):
    _, project = chain
    assert results(project, "finetune")["meta"]["folds_done"] == [1, 2]
    fairness = results(project, "fairness")
    age = dict(zip(FEMALE + MALE, ["under_40", "over_40"] * 5))
    for fold in ("1", "2"):
        assert fairness[fold]["gender"]["n_groups"] == 2 and fairness[fold]["age_group"]["n_groups"] == 2
        test = pd.read_csv(project / "finetune" / "yours" / RUN / f"fold_{fold}_test_predictions.csv")
        assert fairness[fold]["age_group"]["statistical_parity"] == pytest.approx(
            multiclass_statistical_parity(test.prediction, test.speaker.map(age)))
    assert fairness["meta"]["value_folds"]["age_group"]["statistical_parity"] == [1, 2]
    privacy = results(project, Path("privacy") / "gender")
    assert privacy["meta"]["folds_done"] == [1] and privacy["1"]["linear_probe"]["uar"] is not None
    assert (project / "report" / "yours" / "report.md").is_file()


@pytest.mark.slow
def test_trust_profile_says_what_ran_and_on_how_many_folds(chain):
    """Privacy from fold 1 of 2: the linear probe (--protocol fixed) with "1 of 2 folds" and no spread, the
    original's probe beside it; the age_group column as the fairness axis."""
    root, project = chain
    privacy = results(project, Path("privacy") / "gender")
    with open(root / "profile" / "trust_profile.csv") as f:
        row = next(csv.DictReader(f))
    assert row["tiny"] == row["random_init"] == "True" and row["folds"] == "2"
    assert row["privacy_probe"] == "linear" and row["privacy_gender_uar_pct_folds"] == "1"
    assert float(row["privacy_gender_uar_pct"]) == pytest.approx(privacy["1"]["linear_probe"]["uar"])
    assert row["privacy_gender_uar_pct_std"] == "" and row["privacy_original_probe_uar_pct_folds"] == "1"
    assert float(row["privacy_original_probe_uar_pct"]) == pytest.approx(privacy["1"]["uar"])
    table = (root / "profile" / "trust_profile.md").read_text()
    linear = privacy["1"]["linear_probe"]["uar"]
    assert f"| WavLM (tiny, random init) | {RUN.name} | 2 | " in table and f"| {linear:.2f} (1 of 2 folds) |" in table
    report = (project / "report" / "yours" / "report.md").read_text()
    assert "## WavLM (tiny, random init)" in report and "- Privacy, the original's probe: " in report
    assert "The linear probe, the axis for `--protocol fixed` runs" in report
    call_script("trustworthy/plot_spider.py", "--dataset", "yours", "--config", str(root / "config.yml"),
                "--output_dir", str(root / "by_age"), "--fairness_group", "age_group")
    fairness = results(project, "fairness")["average"]["age_group"]["statistical_parity"]
    assert "Fairness: age_group statistical parity (%) |" in (root / "by_age" / "trust_profile.md").read_text()
    with open(root / "by_age" / "trust_profile.csv") as f:
        assert float(next(csv.DictReader(f))["fairness_pct"]) == pytest.approx(100 * fairness)


@pytest.mark.slow
def test_a_fresh_process_reads_the_profile_of_a_manifest_corpus(chain, monkeypatch):
    from utils.data import corpora
    from utils.reporting.profile import load_profiles
    from utils.runs.stages import Variant
    monkeypatch.setattr(corpora, "_MANIFEST_CORPORA", {})      # what plot_spider.py starts from: no corpus read yet
    root, project = chain
    profiles = load_profiles(project, "yours", None, Variant())
    assert [p.stale_splits for p in profiles] == [False] and profiles[0].value("uar") is not None


def test_written_files_honour_the_umask(chain):
    root, project = chain
    written = [p for p in [*project.rglob("*"), *(root / "profile").rglob("*")] if p.is_file()
               and p.suffix in (".json", ".csv", ".md", ".png", ".wav", ".pt")]
    modes = {p.relative_to(root): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert {m for m in modes.values()} == {"0o644"}, {p: m for p, m in modes.items() if m != "0o644"}


def test_privacy_on_a_split_with_one_gender_in_dev_and_test(tmp_path, caplog):
    """A split column with one speaker in dev (female) and one in test (male): the original probe cannot pick
    an epoch or score both genders, so it is skipped with the reason; the linear probe still runs."""
    manifest = write_manifest_corpus(tmp_path, n_speakers=4, utts_per_emotion=1, split=True)
    config = tmp_path / "config.yml"
    config.write_text(f"project_dir: {tmp_path / 'project'}\n")
    flags = ["--dataset", "split", *MODEL, "--num_epochs", "1", "--config", str(config)]
    call_script("train_split_gen/manifest.py", "--manifest", str(manifest), "--dataset", "split", "--config", str(config))
    call_script("preprocess_audio/preprocess_audio.py", "--dataset", "split", "--config", str(config))
    call_script("experiment/finetune_single_thread.py", *flags)
    with caplog.at_level("INFO"):
        call_script("trustworthy/privacy/gender_inference.py", *flags, "--bootstrap", "20")
    name = "lr0005_ep1_cnn_conv1_hid16_mean_frozen_tiny_randinit_bs8"
    privacy = json.loads((tmp_path / "project" / "privacy" / "gender" / "split" / "wavlm" / name /
                          "results.json").read_text())
    assert privacy["1"]["original_probe_skipped"] == "dev holds female speakers only; test holds male speakers only"
    assert privacy["average"]["uar"] is None and privacy["meta"]["value_folds"]["uar"] == []
    probe = privacy["1"]["linear_probe"]
    assert probe["n_splits"] == 2 and probe["num_speakers"] == 4 and 0 <= probe["uar"] <= 100
    assert privacy["average"]["linear_probe"]["uar"] == probe["uar"]
    assert "fold 1: original probe not run: dev holds female speakers only" in caplog.text


@pytest.mark.parametrize("genders, says", [({"F"}, "every utterance with a gender label is female"),
                                           (None, "no utterance has a gender label (one starting with f or m)")])
def test_privacy_on_a_corpus_without_both_genders_is_not_available_and_says_why(tmp_path, genders, says, capsys):
    """As MELD: the stage finishes (a grid's fold task does not fail), the fold says why, no model is loaded (no
    finetune run is needed), and the trust profile's n/a names the reason."""
    manifest = write_manifest_corpus(tmp_path, n_speakers=4, utts_per_emotion=1, gender=genders is not None)
    if genders:
        table = pd.read_csv(manifest)
        table["gender"] = genders.pop()
        table.to_csv(manifest, index=False)
    config = tmp_path / "config.yml"
    config.write_text(f"project_dir: {tmp_path / 'project'}\n")
    call_script("train_split_gen/manifest.py", "--manifest", str(manifest), "--dataset", "own", "--num_folds", "2",
                "--config", str(config))
    call_script("preprocess_audio/preprocess_audio.py", "--dataset", "own", "--config", str(config))
    call_script("trustworthy/privacy/gender_inference.py", "--dataset", "own", *MODEL, "--config", str(config))
    privacy = json.loads((tmp_path / "project" / "privacy" / "gender" / "own" / RUN / "results.json").read_text())
    reason = f"gender inference needs both genders, and {says}"
    assert privacy["1"]["original_probe_skipped"] == privacy["1"]["linear_probe"]["reason"] == reason
    assert privacy["average"]["uar"] is None and privacy["average"]["linear_probe"]["uar"] is None
    from utils.reporting.profile import load_profile
    from utils.runs.paths import RunId
    from utils.runs.stages import Variant
    note = load_profile(tmp_path / "project", RunId("own", "wavlm", RUN.name), "WavLM", Variant()).measurements[
        "privacy"].note
    assert note.endswith(f"(fold 1: {reason})")
