"""Smoke test of benchmarks/benchmark_finetune.py: the tiny preset end to end on CPU, as a subprocess."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_project import load_script
from utils.core.errors import TrustSerError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "benchmark_finetune.py"
NUM_UTTERANCES, FOLDS = 400, 5     # the tiny preset
EPOCHS = 4                          # fewer than the preset's 10, to stay quick


def run_benchmark(*flags: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *flags], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of the tiny preset from an unrelated working directory; (stdout, parsed JSON)."""
    workdir = tmp_path_factory.mktemp("bench")
    out = workdir / "bench.json"
    proc = run_benchmark("--preset", "tiny", "--device", "cpu", "--epochs", str(EPOCHS), "--per_epoch_epochs", "1",
                         "--json", str(out), cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_table_lists_every_stage_and_says_it_extrapolates(tiny_run):
    stdout, _ = tiny_run
    for row in ("| feature pass |", "| head training |", "| evaluation |", "| bookkeeping |", "| **total** |",
                "| peak host RSS", "| feature cache |", "| wall time |", "| successes (flipped / attacked) |"):
        assert row in stdout, f"missing table row {row!r}"
    assert "extrapolated from 1 epoch(s) of fold 1" in stdout
    assert "**Ratio (per_epoch total / ours total):" in stdout
    assert "same successes as batch 1: yes" in stdout


@pytest.mark.slow
def test_cache_beats_the_per_epoch_loop(tiny_run):
    _, res = tiny_run
    orig, ours = res["per_epoch"], res["ours"]
    assert res["ratio"] > 1
    assert res["ratio"] == pytest.approx(orig["stages"]["total"] / ours["stages"]["total"], rel=1e-4)  # 6 digits
    assert ours["stages"]["feature pass"] > 0 and orig["stages"]["feature pass"] == 0
    # per_epoch totals are its measured per-batch / per-utterance times scaled to all folds x epochs
    assert orig["stages"]["total"] == pytest.approx(
        orig["seconds_per_training_batch"] * orig["training_batches"]
        + orig["seconds_per_evaluated_utterance"] * orig["evaluated_utterances"], rel=1e-4)
    assert ours["stages"]["total"] == pytest.approx(sum(v for k, v in ours["stages"].items() if k != "total"),
                                                   rel=1e-4)
    assert ours["training_batches"] == orig["training_batches"]


@pytest.mark.slow
def test_feature_pass_runs_once_and_every_fold_reads_memory(tiny_run):
    _, res = tiny_run
    cache = res["ours"]["cache"]
    assert cache["computed"] == NUM_UTTERANCES and cache["utterances"] == NUM_UTTERANCES
    assert cache["from_memory"] == FOLDS * NUM_UTTERANCES      # every fold's train + dev + test, all cached
    assert cache["bytes"] > 0 and res["config"]["epochs"] == EPOCHS


@pytest.mark.slow
def test_batched_fgsm_flips_the_same_utterances_as_batch_1(tiny_run):
    _, res = tiny_run
    fgsm = res["fgsm"]
    assert fgsm["batch_1"]["attacked"] > 0
    assert (fgsm["batched_fp32"]["flipped"], fgsm["batched_fp32"]["attacked"]) == \
        (fgsm["batch_1"]["flipped"], fgsm["batch_1"]["attacked"])
    assert fgsm["same_successes"] is True
    # the default reads the clean predictions from the feature cache (fp16-rounded): on CPU, the same outcome here
    assert (fgsm["batched"]["flipped"], fgsm["batched"]["attacked"]) == \
        (fgsm["batch_1"]["flipped"], fgsm["batch_1"]["attacked"])
    assert fgsm["batched"]["clean_pass"] == "feature cache" and fgsm["batched"]["precision"] == "fp32"
    assert fgsm["ratio"] == pytest.approx(fgsm["batch_1"]["seconds"] / fgsm["batched"]["seconds"], rel=1e-4)


def test_bad_flags_give_one_line_error(tmp_path):
    proc = run_benchmark("--folds", "2", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --folds 2: need at least 3 sessions (train, dev and test)"]


@pytest.mark.slow
def test_podcast_preset_stays_within_its_cache_budget(tmp_path):
    """MSP-Podcast's durations, one split, the cache at 20% of the full size: disk and memory within budget."""
    out = tmp_path / "podcast.json"
    proc = run_benchmark("--preset", "podcast", "--num_utterances", "40", "--epochs", "1", "--no_fgsm",
                         "--device", "cpu", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    full, bounded = res["ours"]["cache"], res["bounded"]["cache"]
    assert res["config"]["run_folds"] == 1 and 4.0 < res["config"]["mean_seconds_cropped"] <= 6.0
    assert bounded["memory_budget_bytes"] == bounded["disk_budget_bytes"] == int(0.2 * full["bytes"]) > 0
    assert 0 < bounded["disk_bytes"] <= bounded["disk_budget_bytes"]
    assert bounded["bytes"] + bounded["front_end_bytes"] <= bounded["memory_budget_bytes"]
    # the tiny WavLM's fp32 front ends take half the bytes of its hidden states: at 20% most utterances keep one
    kept = bounded["front_end_kept_utterances"]     # memory may hold copies of disk entries: counted once
    assert 0 < kept == bounded["live_from_front_end"]
    assert kept <= bounded["front_end_disk_utterances"] + bounded["front_end_utterances"]
    assert 0 < bounded["live_from_front_end"] < bounded["live"] <= 40 and full["utterances"] == 40
    per = res["epochs"]["seconds_per_epoch"]
    assert res["epochs"]["ratio_bounded_vs_per_epoch"] == pytest.approx(per["per_epoch"] / per["bounded"], rel=1e-4)
    assert "| time per epoch |" in proc.stdout and "| computed live every epoch |" in proc.stdout
    assert "only the layers after the stored front end" in proc.stdout
    assert "bounded cache: " in proc.stdout and "(budgets at 20% of the full cache)" in proc.stdout


MiB = 2 ** 20


@pytest.mark.slow
def test_podcast_preset_keeps_explicit_disk_and_memory_budgets(tmp_path):
    """--cache_gb / --memory_gb bound disk and memory apart (--memory_gb 0: nothing in memory; the fraction test
    above bounds both); the extrapolation to MSP-Podcast's 150k utterances is the bounded run's numbers times
    150000 / 40."""
    out = tmp_path / "podcast.json"
    proc = run_benchmark("--preset", "podcast", "--num_utterances", "40", "--epochs", "1", "--no_fgsm",
                         "--cache_gb", str(0.5 * MiB / 2**30), "--memory_gb", "0",
                         "--device", "cpu", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    bounded = res["bounded"]["cache"]
    assert bounded["disk_budget_bytes"] == int(0.5 * MiB) and bounded["memory_budget_bytes"] == 0
    assert 0 < bounded["disk_bytes"] <= bounded["disk_budget_bytes"]   # hidden states and front ends on disk
    assert bounded["bytes"] == bounded["front_end_bytes"] == 0
    assert bounded["utterances"] == bounded["front_end_utterances"] == 0 and bounded["from_memory"] == 0
    # 0.5 MiB of disk holds not all of the 1.2 MiB of hidden states: the rest runs live, mostly from front ends
    assert 0 < bounded["live_from_front_end"] <= bounded["live"] <= 40
    assert "bounded cache: 0.5 MiB disk + 0 GiB memory |" in proc.stdout and "budgets at" not in proc.stdout

    x, scale = res["extrapolated"], 150000 / 40
    per = res["epochs"]["seconds_per_epoch"]
    assert x["scale"] == scale and x["epochs"] == 30
    assert x["seconds_per_epoch"] == pytest.approx(scale * per["bounded"], rel=1e-4)
    assert x["per_epoch_seconds_per_epoch"] == pytest.approx(scale * per["per_epoch"], rel=1e-4)
    assert x["feature_pass_seconds"] == pytest.approx(scale * res["bounded"]["stages"]["feature pass"], rel=1e-4)
    assert x["hours"] == pytest.approx((x["feature_pass_seconds"] + 30 * x["seconds_per_epoch"]) / 3600, rel=1e-4)
    assert x["disk_budget_bytes"] == scale * int(0.5 * MiB)
    line = re.search(r"Linear extrapolation from 40 to 150000 utterances \(x3750; cache (.+?) disk \+ (.+?) memory "
                     r"at full scale\): .*?, 30 epochs ([\d.]+) h; the original loop .*?, ([\d.]+) h", proc.stdout)
    assert line, proc.stdout[-2000:]
    assert line.group(1) == "1.83 GiB" and float(line.group(3)) == pytest.approx(x["hours"], abs=0.006)
    assert float(line.group(4)) == pytest.approx(30 * scale * per["per_epoch"] / 3600, abs=0.006)


def test_podcast_h100_preset_is_the_issue_at_one_twentieth():
    args = load_script(SCRIPT).parse_args(["--preset", "podcast_h100", "--device", "cpu"])
    assert (args.num_utterances, args.run_folds, args.epochs, args.per_epoch_epochs) == (7500, 1, 3, 1)
    assert (args.tiny, args.hidden_size, args.podcast_durations, args.no_fgsm) == (False, 256, True, True)
    assert (args.cache_gb, args.memory_gb, args.budget_fraction) == (3.0, 0.0, None)
    assert 150000 / args.num_utterances * args.cache_gb == 60.0    # 60 GiB at full scale


def test_budget_flags_override_the_preset_and_exclude_each_other():
    parse_args = load_script(SCRIPT).parse_args
    args = parse_args(["--preset", "podcast", "--cache_gb", "1", "--device", "cpu"])
    assert (args.budget_fraction, args.cache_gb, args.memory_gb, args.no_fgsm) == (None, 1.0, 0.0, False)
    args = parse_args(["--preset", "podcast_h100", "--budget_fraction", "0.5", "--fgsm", "--device", "cpu"])
    assert (args.budget_fraction, args.cache_gb, args.memory_gb, args.no_fgsm) == (0.5, None, None, False)
    assert parse_args(["--device", "cpu"]).podcast_durations is False
    with pytest.raises(TrustSerError, match="^--budget_fraction and --memory_gb: give either --budget_fraction "
                                            "or --cache_gb/--memory_gb$"):
        parse_args(["--budget_fraction", "0.2", "--memory_gb", "1", "--device", "cpu"])


BLOCKED = ["pandas", "soundfile", "s3prl", "sklearn", "scipy", "librosa", "holisticai", "torchaudio"]
GPU_CHECK = f"""
import runpy, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None            # importing any of them fails: the check needs torch, transformers, numpy
sys.argv = ["gpu_check.py", *sys.argv[1:]]
runpy.run_path({str(REPO / 'benchmarks' / 'gpu_check.py')!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_without_the_optional_packages(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-c", GPU_CHECK, "--device", "cpu", "--tiny", "--clips", "8",
                           "--batch_size", "4", "--eval_batch_size", "4", "--batches", "2", "--profile", "--json",
                           str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = res["measurements"]
    assert list(rows) == ["feature_pass", "bounded_batch", "original_batch", "head_step", "evaluation"]
    for name, row in rows.items():
        assert row["ours"] > 0 and row["ceiling"] > 0, name
        assert row["ratio_to_ceiling"] == pytest.approx(row["ours"] / row["ceiling"], rel=1e-4)   # JSON: 6 digits
        assert row["target"] is None and f"\n{name} " in proc.stdout     # no GPU targets on CPU; one line each
    assert res["clips"] == 8 and res["batch_size"] == 4 and res["tiny"]
    assert list(res["profile"]) == list(rows)           # --profile: one call of each of ours, its costliest operators
    for name, ops in res["profile"].items():
        assert 0 < len(ops) <= 12 and all(op["self_ms"] >= 0 and op["calls"] > 0 for op in ops), name
        assert [op["self_ms"] for op in ops] == sorted((op["self_ms"] for op in ops), reverse=True)
        assert f"\n{name}: one call's operators" in proc.stdout
