"""What a run is: its identity flags name its folder, run.json records them, and every stage checks them."""
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from model.backbones import BACKBONES, build_backbone, weights_identity
from synthetic_project import REPO, load_script, make_project, run_script
from utils.core.errors import TrustSerError
from utils.runs.cli import add_run_flag, base_parser
from utils.runs.identity import (IDENTITY_NAMES, NOT_IDENTITY, RunConfig, path_hash, record_differences,
                                 run_record)
from utils.reporting.profile import STALE_SPLITS, load_profile
from utils.reporting.radar import DEFAULT_AXES, run_facts
from utils.runs.paths import RunId, finetune_dir, run_name
from utils.runs.stages import Variant

FLAGS = ["--dataset", "demo", "--pretrain_model", "apc", "--random_init", "--tiny", "--device", "cpu",
         "--num_epochs", "1", "--conv_layers", "1", "--hidden_size", "16", "--pooling", "mean", "--folds", "1"]
FINETUNE = load_script("experiment/finetune_single_thread.py")
FAIRNESS = load_script("trustworthy/fairness/fairness_evaluation.py")
PREDICT = load_script("experiment/predict.py")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("identity"), n_speakers=5, utts_per_emotion=2)


def flags(config: Path, *extra: str) -> list[str]:
    return [*FLAGS, "--config", str(config), *extra]


def run_dir(config: Path, *extra: str) -> Path:
    return finetune_dir(config.parent / "project", RunConfig.from_args(base_parser("").parse_args([*FLAGS, *extra])))


def refusal(main, argv: list[str]) -> str:
    with pytest.raises(TrustSerError) as err:
        main(argv)
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- the identity, its folder name

def test_default_flag_runs_keep_their_names_and_other_flags_add_suffixes():
    assert run_name(RunConfig()) == "lr00002_ep50_cnn_conv3_hid256_att_frozen"
    original = RunConfig(learning_rate=0.0005, num_epochs=30, conv_layers=2, hidden_size=128, pooling="mean")
    assert run_name(original) == "lr00005_ep30_cnn_conv2_hid128_mean_frozen"
    assert run_name(original.but(random_init=True, tiny=True, audio_duration=3, protocol="original")) == \
        "lr00005_ep30_cnn_conv2_hid128_mean_frozen_ad3_tiny_randinit_origproto"
    assert run_name(original.but(batch_size=16)) == "lr00005_ep30_cnn_conv2_hid128_mean_frozen_bs16"
    assert run_name(original.but(random_init=True, batch_size=16)) == \
        "lr00005_ep30_cnn_conv2_hid128_mean_frozen_randinit_bs16"      # scripts/demo.sh's runs


def test_pretrain_path_suffix_is_the_resolved_path_however_spelled(tmp_path, monkeypatch):
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path)
    suffix = run_name(RunConfig(pretrain_path=str(tmp_path / "w"))).rsplit("_", 1)[1]
    assert suffix == f"pp{path_hash(str(tmp_path / 'w'))}" and re.fullmatch(r"pp[0-9a-f]{8}", suffix)
    assert run_name(RunConfig(pretrain_path="./w/../w")) == run_name(RunConfig(pretrain_path=str(tmp_path / "w")))
    assert RunConfig(pretrain_path="w").identity()["pretrain_path"] == str(tmp_path / "w")
    assert run_name(RunConfig(pretrain_path=str(tmp_path / "v"))) != run_name(RunConfig(pretrain_path="w"))


def test_every_flag_of_the_parsers_is_identity_or_says_why_not():
    parser = add_run_flag(base_parser(""))
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert set(IDENTITY_NAMES) <= dests
    assert dests - set(IDENTITY_NAMES) == set(NOT_IDENTITY)
    assert not set(IDENTITY_NAMES) & set(NOT_IDENTITY)
    for name in IDENTITY_NAMES:             # the parsers' defaults are RunConfig's
        assert parser.get_default(name) == getattr(RunConfig, name), name


def test_a_record_differs_in_the_flags_that_differ_and_not_in_versions():
    record = run_record(RunConfig(batch_size=8), "random:apc:tiny:seed0")
    assert record_differences(record, record) == []
    older = {**record, "commit": "0" * 40, "versions": {"torch": "1.0"}}
    older["identity"] = {k: v for k, v in record["identity"].items() if k != "protocol"}   # before --protocol
    assert record_differences(older, record) == []
    other = run_record(RunConfig(batch_size=16, learning_rate=0.001), "random:apc:full:seed0")
    assert record_differences(other, record) == ["learning_rate 0.001 (here 0.0002)", "batch_size 16 (here 8)",
                                                 "weights 'random:apc:full:seed0' (here 'random:apc:tiny:seed0')"]


def test_weights_identity_follows_the_contents_not_the_file_times(tmp_path):
    assert weights_identity("apc", random_init=True, tiny=True) == "random:apc:tiny:seed0"
    assert weights_identity("wavlm") == f"hub:{BACKBONES['wavlm'].hub_id}"
    folder = save_wavlm(tmp_path / "a", seed=1)
    first = weights_identity("wavlm", str(folder), tiny=True)
    assert first.startswith(f"local:{folder}:")
    (folder / "config.json").touch()
    assert weights_identity("wavlm", str(folder), tiny=True) == first
    save_wavlm(folder, seed=2)
    assert weights_identity("wavlm", str(folder), tiny=True) != first


def save_wavlm(folder: Path, seed: int) -> Path:
    """A tiny WavLM folder as --pretrain_path takes it: the built-in tiny architecture, weights of `seed`."""
    backbone = build_backbone("wavlm", random_init=True, tiny=True)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in backbone.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    backbone.model.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- two runs that used to share a folder

@pytest.mark.slow
def test_another_batch_size_trains_its_own_run(config):
    for batch_size in ("8", "4"):
        FINETUNE.main(flags(config, "--batch_size", batch_size))
    dirs = {bs: run_dir(config, "--batch_size", bs) for bs in ("8", "4")}
    assert {d.name for d in dirs.values()} == {"lr00002_ep1_cnn_conv1_hid16_mean_frozen_tiny_randinit_bs8",
                                              "lr00002_ep1_cnn_conv1_hid16_mean_frozen_tiny_randinit_bs4"}
    for bs, folder in dirs.items():
        results = json.loads((folder / "results.json").read_text())
        record = json.loads((folder / "run.json").read_text())
        assert results["meta"]["flags"]["batch_size"] == record["identity"]["batch_size"] == int(bs)
        assert record["weights"] == results["1"]["weights"] == "random:apc:tiny:seed0"
        assert record["protocol"] == "fixed" and record["versions"]["torch"] == torch.__version__
    histories = [json.loads((d / "fold_1.json").read_text())["0"]["train"] for d in dirs.values()]
    assert histories[0] != histories[1]             # trained with their own batch sizes, not one run twice


@pytest.mark.slow
def test_another_pretrain_path_trains_its_own_run_and_changed_weights_are_refused(config, tmp_path):
    base = ["--dataset", "demo", "--pretrain_model", "wavlm", "--tiny", "--device", "cpu", "--num_epochs", "1",
            "--conv_layers", "1", "--hidden_size", "16", "--pooling", "mean", "--batch_size", "8", "--folds", "1",
            "--config", str(config)]
    local = ["--pretrain_path"]
    folders = [save_wavlm(tmp_path / name / "wavlm", seed) for name, seed in (("a", 1), ("b", 2))]
    for folder in folders:
        FINETUNE.main([*base, *local, str(folder)])
    dirs = [finetune_dir(config.parent / "project", RunConfig(dataset="demo", pretrain_model="wavlm", tiny=True,
                                                               pretrain_path=str(f), num_epochs=1, conv_layers=1,
                                                               hidden_size=16, pooling="mean", batch_size=8))
            for f in folders]
    assert [d.name.rsplit("_", 1)[1] for d in dirs] == [f"pp{path_hash(str(f))}" for f in folders]
    records = [json.loads((d / "run.json").read_text()) for d in dirs]
    results = [json.loads((d / "results.json").read_text()) for d in dirs]
    for folder, record, result in zip(folders, records, results):
        assert record["identity"]["pretrain_path"] == result["meta"]["flags"]["pretrain_path"] == str(folder)
        assert record["weights"] == weights_identity("wavlm", str(folder), tiny=True)
        assert result["1"]["weights"].startswith(f"file:{folder}:")
    assert records[0]["weights"] != records[1]["weights"]

    # other weights copied into the first folder: its run is no longer what the folder holds
    shutil.copy(folders[1] / "model.safetensors", folders[0] / "model.safetensors")
    message = refusal(FINETUNE.main, [*base, *local, str(folders[0])])
    assert f"{dirs[0] / 'run.json'} describes another run (weights " in message and "--overwrite" in message
    FINETUNE.main([*base, *local, str(folders[0]), "--overwrite"])
    assert json.loads((dirs[0] / "run.json").read_text())["weights"] == records[1]["weights"].replace(
        str(folders[1]), str(folders[0]))


# ---------------------------------------------------------------- a folder of another run, a folder without run.json

@pytest.mark.slow
def test_a_folder_of_another_run_is_refused_unless_overwrite(config):
    argv = flags(config, "--batch_size", "8", "--learning_rate", "0.001")
    FINETUNE.main(argv)
    folder = run_dir(config, "--batch_size", "8", "--learning_rate", "0.001")
    record = json.loads((folder / "run.json").read_text())
    record["identity"]["batch_size"] = 16            # what a folder holding another run's folds says
    (folder / "run.json").write_text(json.dumps(record))
    for extra in ([], ["--aggregate_only"], ["--folds", "2"]):       # skip, aggregate, train (resume) another fold
        message = refusal(FINETUNE.main, argv + extra)
        assert "describes another run (batch_size 16 (here 8))" in message and "--overwrite" in message
    assert "trained as another run (batch_size 16 (here 8))" in refusal(FAIRNESS.main, argv)
    assert not (folder / "fold_2.json").exists()

    proc = run_script("experiment/finetune_single_thread.py", *argv, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "batch_size 16 (here 8)" in proc.stderr.strip().splitlines()[-1]

    FINETUNE.main(argv + ["--overwrite"])
    assert json.loads((folder / "run.json").read_text())["identity"]["batch_size"] == 8
    assert json.loads((folder / "results.json").read_text())["meta"]["folds_done"] == [1]
    FAIRNESS.main(argv + ["--bootstrap", "0"])


@pytest.mark.slow
def test_a_folder_written_before_run_json_is_read_with_one_warning(config, caplog):
    argv = flags(config, "--batch_size", "8", "--learning_rate", "0.003")
    FINETUNE.main(argv)
    folder = run_dir(config, "--batch_size", "8", "--learning_rate", "0.003")
    before = json.loads((folder / "results.json").read_text())
    (folder / "run.json").unlink()
    (folder / "results.json").unlink()
    with caplog.at_level(logging.WARNING, logger="trust-ser"):
        FINETUNE.main(argv + ["--aggregate_only"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "trust-ser"]
    assert warnings == [f"{folder} has no run.json (written by an earlier version): its flags cannot be checked"]
    assert json.loads((folder / "results.json").read_text()) == before
    assert not (folder / "run.json").exists()        # aggregating writes no fold file: nothing recorded
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trust-ser"):
        FAIRNESS.main(argv + ["--bootstrap", "0"])
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "trust-ser"] == warnings


def test_splits_made_again_differently_are_another_run(config, tmp_path):
    argv = flags(config, "--batch_size", "8", "--learning_rate", "0.004")
    FINETUNE.main(argv)
    folder = run_dir(config, "--batch_size", "8", "--learning_rate", "0.004")
    recorded = json.loads((folder / "run.json").read_text())["splits"]
    split = config.parent / "project" / "train_split" / "demo_fold2.json"
    original = split.read_text()
    try:
        moved = json.loads(original)
        for entry in moved["test"]:
            entry[3] = "/elsewhere/" + Path(entry[3]).name       # the corpus copied to another disk: the same splits
        split.write_text(json.dumps(moved))
        FINETUNE.main(argv)
        assert json.loads((folder / "run.json").read_text())["splits"] == recorded

        moved["train"][:2] = moved["train"][1::-1]             # made again with another order: another run
        split.write_text(json.dumps(moved))
        expected = "describes another run (its train/dev/test splits, which train_split/ no longer holds)"
        for extra in ([], ["--folds", "2"], ["--aggregate_only"]):
            assert expected in refusal(FINETUNE.main, argv + extra)
        assert "trained as another run (its train/dev/test splits" in refusal(FAIRNESS.main, argv)
        audio = sorted((config.parent / "project" / "audio").rglob("*.wav"))[:2]
        PREDICT.main(argv + ["--audio", *map(str, audio), "--output", str(tmp_path / "p.csv")])    # new audio: fine
        assert not (folder / "fold_2.json").exists()
        run = RunId.of(RunConfig.from_args(base_parser("").parse_args(argv)))
        stale = load_profile(config.parent / "project", run, "APC", Variant())
        assert stale.stale_splits and STALE_SPLITS in run_facts(stale, DEFAULT_AXES)       # the legend says so
        FINETUNE.main(argv + ["--overwrite"])
        assert json.loads((folder / "run.json").read_text())["splits"] != recorded
        assert not load_profile(config.parent / "project", run, "APC", Variant()).stale_splits
    finally:
        split.write_text(original)


# ---------------------------------------------------------------- --run instead of the flags

@pytest.mark.slow
def test_run_folder_gives_what_the_flags_give(config, tmp_path):
    argv = flags(config, "--batch_size", "8")
    folder = run_dir(config, "--batch_size", "8")
    if not (folder / "run.json").is_file():
        FINETUNE.main(argv)
    project = config.parent / "project"
    out = project / "fairness" / "demo" / "apc" / folder.name
    shutil.rmtree(out, ignore_errors=True)
    FAIRNESS.main(argv + ["--bootstrap", "20"])
    by_flags = (out / "results.json").read_bytes()
    shutil.rmtree(out)
    FAIRNESS.main(["--run", str(folder), "--config", str(config), "--folds", "1", "--bootstrap", "20"])
    assert (out / "results.json").read_bytes() == by_flags
    assert json.loads(by_flags)["meta"]["flags"]["batch_size"] == 8

    audio = sorted((project / "audio").rglob("*.wav"))[:3]
    PREDICT.main(argv + ["--audio", *map(str, audio), "--output", str(tmp_path / "flags.csv")])
    PREDICT.main(["--run", f"apc/{folder.name}", "--dataset", "demo", "--config", str(config), "--folds", "1",
                  "--device", "cpu", "--audio", *map(str, audio), "--output", str(tmp_path / "run.csv")])
    assert (tmp_path / "run.csv").read_text() == (tmp_path / "flags.csv").read_text()
    assert len((tmp_path / "run.csv").read_text().splitlines()) == 4

    message = refusal(FAIRNESS.main, ["--run", str(folder), "--config", str(config), "--batch_size", "4"])
    assert "--batch_size 4 contradicts --run" in message and "8" in message
    message = refusal(FAIRNESS.main, ["--run", "apc/no_such_run", "--dataset", "demo", "--config", str(config)])
    assert "no such run folder" in message
    elsewhere = tmp_path / "elsewhere.yml"
    elsewhere.write_text(f"project_dir: {tmp_path / 'other_project'}\n")
    message = refusal(FAIRNESS.main, ["--run", str(folder), "--config", str(elsewhere)])
    assert message == (f"--run {folder}: the run lies in project_dir {project.resolve()}; pass --config with that "
                       f"project_dir; the config file {elsewhere} has project_dir {tmp_path / 'other_project'}")
    renamed = folder.with_name(folder.name + "_copy")
    shutil.copytree(folder, renamed)
    try:
        message = refusal(FAIRNESS.main, ["--run", str(renamed), "--config", str(config)])
    finally:
        shutil.rmtree(renamed)
    assert f"its run.json describes the run finetune/demo/apc/{folder.name} under a project_dir, which this" in message


# ---------------------------------------------------------------- one module names the files

def test_no_module_but_the_run_folder_spells_a_fold_file_name():
    pattern = re.compile(r"""fold_\{|["']\.?fold_|fold_\*""")
    allowed = REPO / "utils" / "runs" / "paths.py"
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                 for top in ("utils", "model", "experiment", "trustworthy", "train_split_gen", "benchmarks",
                             "preprocess_audio")
                 for path in sorted((REPO / top).rglob("*.py")) if path != allowed
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
