import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from synthetic_project import load_script
from utils.core.errors import TrustSerError
from utils.reporting.cli import profile_parser, profile_variant
from utils.reporting import radar
from utils.reporting.profile import RunProfile, load_profiles
from utils.reporting.radar import (DEFAULT_AXES, Point, _value_text, axis_ranges, legend_label, natural_range,
                                  nice_step, own_ranges, place, ticks, wrap_entries)
from utils.reporting.report import AxisChoice, write_trust_profile
from utils.runs.stages import STAGE, Variant

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "trustworthy" / "plot_spider.py"
RUN = "lr00005_ep30_cnn_conv2_hid128_mean_frozen"

# model -> (uar, uar std, speaker statistical parity, gender UAR, FGSM success, GFLOPs)
MODELS = {"wavlm": (66.43, 1.2, 0.153, 91.7, 62.5, 41.6), "apc": (58.21, 2.1, 0.224, 96.2, 88.0, 8.3)}


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _fake_project(root: Path, skip_privacy_for: str | None = None) -> Path:
    tail = Path("iemocap")
    for model, (uar, uar_std, sp, gender_uar, success, gflops) in MODELS.items():
        run_tail = tail / model / RUN
        _write(root / "finetune" / run_tail / "results.json",
               {"1": {"uar": uar}, "average": {"uar": uar, "acc": uar + 1}, "std": {"uar": uar_std},
                "meta": {"flags": {"random_init": False}, "folds_done": [1, 2, 3, 4, 5], "folds_missing": []}})
        fairness = {"statistical_parity": sp, "equality_of_opportunity": sp / 2, "demographic_parity": sp / 3}
        _write(root / "fairness" / run_tail / "results.json",
               {"1": {"speaker": fairness}, "average": {"speaker": fairness, "gender": fairness},
                "std": {"speaker": {k: 0.01 for k in fairness}}})
        _write(root / "attack" / "fgsm" / "45" / run_tail / "results.json",
               {"average": {"success_rate": success}, "std": {"success_rate": 3.0}})
        if model != skip_privacy_for:
            _write(root / "privacy" / "gender" / run_tail / "results.json",      # the linear probe 20 points lower
                   {"average": {"uar": gender_uar, "linear_probe": {"uar": gender_uar - 20}},
                    "std": {"uar": 0.5, "linear_probe": {"uar": 1.5}}})
        _write(root / "flops" / run_tail / "gflops.json", {"gflops": gflops, "params_total": 1000})
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd="/")


@pytest.fixture(scope="module")
def spider():
    return load_script(SCRIPT)


def _assert_image(path: Path) -> None:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] > 500 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05            # not a blank canvas


@pytest.mark.slow
def test_profiles_tables_and_charts(tmp_path):
    project = _fake_project(tmp_path / "project", skip_privacy_for="apc")
    out = tmp_path / "out"
    result = _run("--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "APC: n/a: missing" in result.stderr and "privacy" in result.stderr
    assert "robustness" not in result.stderr and "ece" not in result.stderr      # axes not drawn: nothing to say
    for name in ("WavLM.png", "APC.png", "compare.png"):
        _assert_image(out / name)

    with open(out / "trust_profile.csv") as f:
        rows = {row["pretrain_model"]: row for row in csv.DictReader(f)}
    assert float(rows["wavlm"]["uar_pct"]) == pytest.approx(66.43)
    assert float(rows["wavlm"]["uar_pct_std"]) == pytest.approx(1.2)
    assert float(rows["wavlm"]["fairness_pct"]) == pytest.approx(15.3)
    assert float(rows["wavlm"]["fairness_pct_std"]) == pytest.approx(1.0)
    assert float(rows["apc"]["safety_success_pct"]) == pytest.approx(88.0)
    assert float(rows["apc"]["gflops"]) == pytest.approx(8.3) and rows["apc"]["gflops_std"] == ""
    # --protocol fixed runs: the linear probe on the axis, the original's probe beside it
    assert float(rows["wavlm"]["privacy_gender_uar_pct"]) == pytest.approx(71.7)
    assert rows["wavlm"]["privacy_probe"] == "linear"
    assert float(rows["wavlm"]["privacy_original_probe_uar_pct"]) == pytest.approx(91.7)
    assert rows["apc"]["privacy_gender_uar_pct"] == ""

    markdown = (out / "trust_profile.md").read_text()
    assert "| WavLM | " + RUN + " | 5 | 66.43 ± 1.20 | 15.30 ± 1.00 | 71.70 ± 1.50 | 62.50 ± 3.00 | 41.60 |" \
        in markdown
    assert "Privacy: gender inference UAR (%), linear probe |" in markdown
    assert "| APC | " + RUN + " | 5 | 58.21 ± 2.10 | 22.40 ± 1.00 | n/a | 88.00 ± 3.00 | 8.30 |" in markdown
    # natural scales: chance (4 classes) to 100, 50 to 100, 0 to 100, 0 to a round value >= the largest run
    assert ("Ranges of the comparison chart: System Performance 25 to 100; Fairness 0 to 25; Privacy 50 to 100; "
            "Safety 0 to 100; Sustainability 0 to 50.") in markdown


def test_runs_filter_labels_ranges_and_gender_metric(tmp_path, spider):
    project = _fake_project(tmp_path / "project")
    out = tmp_path / "out"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out),
                 "--runs", f"wavlm/{RUN}=My WavLM", "--fairness_group", "gender",
                 "--fairness_metric", "equality_of_opportunity", "--ranges", "uar=50:70", "gflops=0:48"])
    _assert_image(out / "My_WavLM.png")
    assert not (out / "APC.png").exists()
    markdown = (out / "trust_profile.md").read_text()
    assert "| My WavLM | " in markdown and "7.65" in markdown          # 100 * 0.153 / 2
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out),
                 "--runs", f"wavlm/{RUN}=WavLM | frozen"])
    row = (out / "trust_profile.md").read_text().splitlines()[2]
    assert row.startswith("| WavLM \\| frozen | ") and row.count(" | ") == 7     # 8 cells: the pipe splits none
    assert "System Performance 50 to 70" in markdown and "Sustainability 0 to 48" in markdown


@pytest.mark.slow
def test_bad_inputs_give_one_line_errors(tmp_path, spider):
    project = _fake_project(tmp_path / "project")
    out = str(tmp_path / "o")
    empty = _run("--dataset", "iemocap", "--project_dir", str(tmp_path / "nothing"), "--output_dir", out)
    assert empty.returncode == 2 and "no runs found" in empty.stderr and len(empty.stderr.splitlines()) == 1
    common = ["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", out]
    with pytest.raises(TrustSerError, match="LOW must be below HIGH"):
        spider.main(common + ["--ranges", "uar=70:50"])
    with pytest.raises(TrustSerError, match="AXIS=LOW:HIGH"):
        spider.main(common + ["--ranges", "speed=1:2"])
    with pytest.raises(TrustSerError, match="AXIS=LOW:HIGH"):
        spider.main(common + ["--ranges", "uar=1..2:3"])             # a ValueError traceback before
    spider.main(common + ["--ranges", "sustainability=0:60", "performance=.5:100"])     # the names --axes takes
    assert "Sustainability 0 to 60" in (Path(out) / "trust_profile.md").read_text()
    with pytest.raises(TrustSerError, match=r"argument --output_dir: .*config.yml is a file; give a folder"):
        spider.main([*common[:-2], "--output_dir", str(REPO / "config" / "config.yml")])
    typo = _run(*common, "--attack_method", "pgdd")
    assert typo.returncode == 2 and "invalid choice: 'pgdd'" in typo.stderr and len(typo.stderr.splitlines()) == 1
    with pytest.raises(TrustSerError, match="two runs are labelled 'Same'; give them different labels"):
        spider.main(common + ["--runs", f"wavlm/{RUN}=Same", f"apc/{RUN}=Same"])
    with pytest.raises(TrustSerError, match=r"the label 'a b' gives the chart file a_b.png, as the label 'A/B' does"):
        spider.main(common + ["--runs", f"wavlm/{RUN}=A/B", f"apc/{RUN}=a b"])      # also where case is ignored
    with pytest.raises(TrustSerError, match="gives the chart file compare.png, as the comparison chart does"):
        spider.main(common + ["--runs", f"wavlm/{RUN}=compare"])
    with pytest.raises(TrustSerError, match="no results at all for wavlm/no_such_run"):
        spider.main(common + ["--runs", "wavlm/no_such_run"])
    with pytest.raises(TrustSerError, match="MODEL/RUN_NAME"):
        spider.main(common + ["--runs", "wavlm"])
    (project / "flops" / "iemocap" / "apc" / RUN / "gflops.json").write_text("{not json")
    with pytest.raises(TrustSerError, match="gflops.json is not valid JSON"):
        spider.main(common)


@pytest.mark.slow
def test_axis_missing_for_every_run(tmp_path, spider):
    project = _fake_project(tmp_path / "project")
    for model in MODELS:
        (project / "privacy" / "gender" / "iemocap" / model / RUN / "results.json").unlink()
    out = tmp_path / "out"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out)])
    _assert_image(out / "compare.png")
    assert "Privacy n/a" in (out / "trust_profile.md").read_text()


@pytest.mark.slow
def test_snr_given_as_float_reads_the_writers_folder(tmp_path, spider):
    from utils.runs.paths import RunId, attack_dir
    run = RunId("iemocap", "wavlm", RUN)
    assert attack_dir(tmp_path, run, "fgsm", 45) == attack_dir(tmp_path, run, "fgsm", 45.0) \
        == tmp_path / "attack" / "fgsm" / "45" / "iemocap" / "wavlm" / RUN
    project = _fake_project(tmp_path / "project")
    out = tmp_path / "out"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out), "--snr", "45.0"])
    assert float(_rows(out)["wavlm"]["safety_success_pct"]) == pytest.approx(62.5)


def _rows(out: Path) -> dict:
    with open(out / "trust_profile.csv") as f:
        return {row["pretrain_model"]: row for row in csv.DictReader(f)}


def _only_finetune(root: Path, model: str, run: str, uar: float, folds: list[int], **meta) -> None:
    _write(root / "finetune" / "iemocap" / model / run / "results.json",
           {"1": {"uar": uar}, "average": {"uar": uar}, "std": {"uar": 0.0},
            "meta": {"folds_done": folds, **meta}})


@pytest.mark.slow
def test_one_run_below_chance_is_drawn_at_the_centre_and_marked(tmp_path):
    project = tmp_path / "project"
    _only_finetune(project, "tera", RUN, 20.5, [1, 2])
    _write(project / "flops" / "iemocap" / "tera" / RUN / "gflops.json", {"gflops": 6.02})
    out = tmp_path / "out"
    result = _run("--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    _assert_image(out / "TERA.png")
    _assert_image(out / "compare.png")
    markdown = (out / "trust_profile.md").read_text()
    assert "| TERA | " + RUN + " | 2 | 20.50 ± 0.00 | n/a | n/a | n/a | 6.02 |" in markdown
    assert "System Performance 25 to 100;" in markdown and "Sustainability 0 to 8." in markdown
    profile = load_profiles(project, "iemocap", None, profile_variant(_flags()))[0]
    ranges = axis_ranges([profile], {}, 4, zoom=False)
    point = place(STAGE["uar"], 20.5, ranges["uar"])
    assert (point.radius, point.off_scale) == (0.0, -1)
    assert "(off scale)" in _value_text(profile, "uar", point)
    inside = place(STAGE["gflops"], 6.02, ranges["gflops"])
    assert inside.off_scale == 0 and inside.radius == pytest.approx(1 - 6.02 / 8)


@pytest.mark.slow
def test_one_run_with_only_finetune_results(tmp_path, spider):
    project = tmp_path / "project"
    _only_finetune(project, "wavlm", RUN, 61.0, [1, 2, 3, 4, 5])
    out = tmp_path / "out"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out)])
    _assert_image(out / "WavLM.png")
    markdown = (out / "trust_profile.md").read_text()
    assert "| WavLM | " + RUN + " | 5 | 61.00 ± 0.00 | n/a | n/a | n/a | n/a |" in markdown
    assert "Fairness n/a; Privacy n/a; Safety n/a; Sustainability n/a." in markdown


@pytest.mark.slow
def test_five_runs_with_missing_evaluations_random_init_and_collapsed_probe(tmp_path, spider):
    project = _fake_project(tmp_path / "project", skip_privacy_for="apc")
    _only_finetune(project, "tera", RUN + "_randinit", 24.0, [1])
    _only_finetune(project, "apc", "other_run", 70.0, [1, 2, 3], flags={"random_init": True})
    orig = RUN + "_origproto"                  # a --protocol original run: its privacy axis is the original's probe
    _only_finetune(project, "whisper_tiny", orig, 55.5, [1, 2, 3, 4, 5])
    _write(project / "privacy" / "gender" / "iemocap" / "whisper_tiny" / orig / "results.json",
           {"1": {"uar": 50.0, "collapsed": True}, "average": {"uar": 50.0, "linear_probe": {"uar": 71.25}},
            "std": {"uar": 0.0, "linear_probe": {"uar": 2.5}}, "meta": {"folds_done": [1]}})
    out = tmp_path / "out"
    result = _run("--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    image = mpimg.imread(out / "compare.png")
    assert image.shape[1] < 1400 and image.shape[0] < 1600          # the legend wraps below the radar
    _assert_image(out / "compare.png")
    rows = {(r["pretrain_model"], r["run_name"]): r for r in csv.DictReader(open(out / "trust_profile.csv"))}
    assert len(rows) == 5
    assert rows[("tera", RUN + "_randinit")]["random_init"] == "True"            # from the run name
    assert rows[("apc", "other_run")]["random_init"] == "True"                   # from meta.flags
    assert rows[("wavlm", RUN)]["random_init"] == "False"
    whisper = rows[("whisper_tiny", orig)]
    assert whisper["privacy_probe"] == "original" and whisper["privacy_collapsed"] == "True"
    assert float(whisper["privacy_gender_uar_pct"]) == 50.0 and whisper["privacy_gender_uar_pct_folds"] == "1"
    assert whisper["privacy_gender_uar_pct_std"] == ""                          # one fold: no spread
    assert rows[("wavlm", RUN)]["privacy_probe"] == "linear"
    markdown = (out / "trust_profile.md").read_text()
    assert "| 50.00 (1 of 5 folds) (probe collapsed) |" in markdown          # one fold: no "± 0.00"
    assert "| TERA (random init) | " + RUN + "_randinit | 1 | 24.00 |" in markdown
    assert "Privacy: gender inference UAR (%) linear probe (--protocol original runs: the original's probe) |" \
        in markdown
    # the linear probe from the same results.json; not flagged (it did not collapse)
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(tmp_path / "lin"),
                 "--privacy_probe", "linear", "--runs", f"whisper_tiny/{orig}"])
    assert "| 71.25 (1 of 5 folds) |" in (tmp_path / "lin" / "trust_profile.md").read_text()
    assert "linear probe" in (tmp_path / "lin" / "trust_profile.md").read_text()


def _flags(*extra: str):
    return profile_parser("t").parse_args(["--dataset", "iemocap", *extra])


def test_runs_after_the_first_ten_keep_apart_by_their_lines(tmp_path, monkeypatch):
    for i in range(12):
        _only_finetune(tmp_path, "apc", f"lr00{10 + i}_ep30_cnn_conv2_hid128_mean_frozen", 40.0 + i, [1])
    profiles = load_profiles(tmp_path, "iemocap", None, profile_variant(_flags()))
    figures = []
    monkeypatch.setattr(radar, "save_png", lambda fig, path: figures.append(fig))
    radar.draw_overlay(profiles, axis_ranges(profiles, {}, 4, zoom=False), Variant(), "iemocap", tmp_path / "c.png")
    styles = [(line.get_color(), line.get_linestyle()) for line in figures[0].axes[0].get_legend().get_lines()]
    assert len(styles) == 12 and len(set(styles)) == 12
    assert styles[10] == (styles[0][0], "--")


def test_runs_of_one_corpus_read_its_present_splits_once(tmp_path, monkeypatch):
    from utils.reporting import profile
    project = _fake_project(tmp_path / "project")
    for model in MODELS:
        _write(project / "finetune" / "iemocap" / model / RUN / "run.json", {"splits": "0123456789abcdef"})
    read = []
    monkeypatch.setattr(profile, "splits_fingerprint", lambda *args: read.append(args) or "fedcba9876543210")
    profiles = load_profiles(project, "iemocap", None, profile_variant(_flags()))
    assert [p.stale_splits for p in profiles] == [True, True]
    assert read == [(project, "iemocap", [1, 2, 3, 4, 5])]


def test_zoom_gives_tight_round_ranges_for_close_runs(tmp_path):
    project = _fake_project(tmp_path / "project")
    profiles = load_profiles(project, "iemocap", None, profile_variant(_flags()))
    zoomed = axis_ranges(profiles, {"safety": (40.0, 100.0)}, 4, zoom=True)
    low, high = zoomed["uar"]
    assert 25 <= low <= 58.21 and 66.43 <= high and high - low <= 20         # not 25 to 100
    step = nice_step((high - low) / 4)
    assert low % step == pytest.approx(0) and high % step == pytest.approx(0)
    assert zoomed["safety"] == (40.0, 100.0)                                  # --ranges still wins
    assert 50 <= zoomed["privacy"][0] <= 71.7 and zoomed["privacy"][1] <= 100
    below = axis_ranges([_profile_with(uar=20.0)], {}, 4, zoom=True)["uar"]
    assert below[0] <= 20.0 <= below[1] and below[0] >= 0                    # the floor gives way to the data


def _profile_with(**values):
    from utils.runs.paths import RunId
    from utils.runs.stages import STAGES, Measurement
    return RunProfile(RunId("iemocap", "m", "r"), "m",
                             measurements={s.key: Measurement(values.get(s.key)) for s in STAGES})


def test_ranges_ticks_and_radius():
    uar, fairness, privacy = STAGE["uar"], STAGE["fairness"], STAGE["privacy"]
    assert natural_range(uar, [30.0], 7) == (pytest.approx(100 / 7), 100.0)
    assert natural_range(fairness, [15.3, 22.4], 4) == (0.0, 25.0)
    assert natural_range(STAGE["gflops"], [60.2], 4) == (0.0, 80.0)
    assert natural_range(STAGE["gflops"], [0.0], 4) == (0.0, 1.0)
    assert ticks(25.0, 100.0) == [25.0, 40, 60, 80, 100.0]
    assert ticks(0.0, 25.0) == [0.0, 5, 10, 15, 20, 25.0]
    assert ticks(100 / 7, 100.0) == [pytest.approx(100 / 7), 40, 60, 80, 100.0]   # 20 would crowd the centre
    assert place(fairness, 10.0, (10.0, 30.0)).radius == 1.0
    assert place(fairness, 30.0, (10.0, 30.0)).radius == 0.0
    assert place(fairness, 40.0, (10.0, 30.0)) == Point(0.0, -1)
    assert place(privacy, 45.0, (50.0, 100.0)) == Point(1.0, 1)               # below 50: beyond the better end
    assert place(uar, 70.0, (50.0, 70.0)) == Point(1.0, 0)
    assert place(uar, 33.3333, (100 / 3, 100.0)) == Point(0.0, 0)      # chance, as saved: on the end, not past it
    assert place(uar, 33.333, (100 / 3, 100.0)) == Point(0.0, -1)


def test_axes_add_robustness_and_calibration_in_the_given_order(tmp_path, spider):
    project = _fake_project(tmp_path / "project")
    for model, (drop, ece) in {"wavlm": (12.5, 0.041), "apc": (31.0, 0.187)}.items():
        _write(project / "robustness" / "iemocap" / model / RUN / "results.json",
               {"average": {"mean_uar_drop": drop}, "std": {"mean_uar_drop": 2.0}, "meta": {"folds_done": [1, 2]}})
        finetune = project / "finetune" / "iemocap" / model / RUN / "results.json"
        results = json.loads(finetune.read_text())
        results["average"]["ece"], results["std"] = ece, {**results["std"], "ece": 0.01}
        finetune.write_text(json.dumps(results))
    default, chosen = tmp_path / "default", tmp_path / "chosen"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(default)])
    assert "Robustness" not in (default / "trust_profile.md").read_text()       # the original's five by default
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(chosen), "--axes",
                 "uar,fairness,safety,privacy,sustainability,robustness,calibration"])
    _assert_image(chosen / "compare.png")
    markdown = (chosen / "trust_profile.md").read_text()
    assert "| WavLM | " + RUN + " | 5 | 66.43 ± 1.20 | 15.30 ± 1.00 | 62.50 ± 3.00 | 71.70 ± 1.50 | 41.60 | " \
           "12.50 ± 2.00 (2 of 5 folds) | 4.10 ± 1.00 |" in markdown
    assert "Robustness 0 to 40; Calibration 0 to 20." in markdown        # natural: 0 to a round value >= the largest
    with open(chosen / "trust_profile.csv") as f:
        rows = {row["pretrain_model"]: row for row in csv.DictReader(f)}
    assert float(rows["apc"]["robustness_uar_drop_pts"]) == 31.0 and float(rows["apc"]["calibration_ece_pct"]) == 18.7
    assert rows["wavlm"]["calibration_ece_pct"] == "4.1"            # 100 * 0.041, without the binary noise
    for bad in ("uar,fairness", "uar,fairness,speed", "uar,uar,safety"):
        with pytest.raises(TrustSerError, match="--axes"):
            spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(chosen),
                         "--axes", bad])


def test_legend_names_what_ran_counts_folds_per_axis_and_wraps_between_entries():
    from utils.runs.paths import RunId
    from utils.runs.stages import STAGES, Measurement
    folds = {"uar": 5, "fairness": 5, "privacy": 1, "safety": 5}
    profile = RunProfile(RunId("iemocap", "wavlm", "r"), "WavLM", ["tiny", "random init"],
                         {s.key: Measurement(50.0, 1.0, folds.get(s.key)) for s in STAGES})
    assert profile.name == "WavLM (tiny, random init)"
    legend = legend_label(profile, ["uar", "fairness", "privacy", "safety"])
    assert legend == "WavLM (tiny, random init)\n5 folds (privacy 1)"
    assert _value_text(profile, "privacy", Point(0.5, 0)) == "50\n(1 of 5 folds)"
    assert _value_text(profile, "uar", Point(0.5, 0)) == "50"
    assert wrap_entries(["a" * 20, "b" * 8, "c" * 8, "d" * 30], 20) == \
        "a" * 20 + "\nbbbbbbbb · cccccccc\n" + "d" * 30
    # a model with several runs is labelled with the run's name: broken before its parentheses
    run = "lr00005_ep30_cnn_conv2_hid128_mean_frozen"
    profile.label = f"WavLM ({run})"
    assert legend_label(profile, ["uar", "fairness"]) == f"WavLM\n({run})\n(tiny, random init) · 5 folds"
    profile.label = "APC"
    assert legend_label(profile, ["uar", "privacy"]) == "APC (tiny, random init)\n5 folds (privacy 1)"


def test_each_run_chart_on_its_own_ranges_the_comparison_on_common_ones(tmp_path):
    """On a shared scale WavLM's 41.6 GFLOPs (0 to 50) and APC's 22.4 % parity (0 to 25) sit near the centre of
    their own charts; there fairness runs to 100 and GFLOPs to about twice the run's value."""
    project = _fake_project(tmp_path / "project")
    profiles = load_profiles(project, "iemocap", None, profile_variant(_flags()))
    charts, ranges = write_trust_profile(profiles, AxisChoice(list(DEFAULT_AXES), {}, 4, False),
                                         profile_variant(_flags()), "iemocap", tmp_path / "out")
    assert ranges["gflops"] == (0.0, 50.0) and ranges["fairness"] == (0.0, 25.0)
    apc, wavlm = (own_ranges(p, {}, 4, False, DEFAULT_AXES) for p in profiles)
    assert apc["fairness"] == wavlm["fairness"] == (0.0, 100.0)
    assert apc["gflops"] == (0.0, 20.0) and wavlm["gflops"] == (0.0, 100.0)
    assert apc["uar"] == ranges["uar"] == (25.0, 100.0) and apc["privacy"] == (50.0, 100.0)
    assert own_ranges(profiles[0], {"gflops": (0.0, 48.0)}, 4, False, DEFAULT_AXES)["gflops"] == (0.0, 48.0)
    assert sorted(charts) == ["APC", "WavLM", "compare"]


def test_six_runs_compare_chart(tmp_path, spider):
    project = _fake_project(tmp_path / "project")
    for model, uar in (("tera", 40.0), ("whisper_tiny", 55.0), ("whisper_base", 60.0), ("wav2vec2_0", 62.0)):
        _only_finetune(project, model, RUN + "_tiny_randinit", uar, [1, 2, 3, 4, 5])
    out = tmp_path / "out"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out)])
    image = mpimg.imread(out / "compare.png")
    assert image.shape[1] < 1400 and image.shape[0] < 1700
    markdown = (out / "trust_profile.md").read_text()
    assert "| Whisper Base (tiny, random init) | " + RUN + "_tiny_randinit | 5 | 60.00 ± 0.00 |" in markdown


def test_a_run_is_named_by_its_model_folder_or_its_hub_id():
    from utils.reporting.profile import find_runs
    from utils.runs.paths import RunId, model_and_run
    assert model_and_run("microsoft/wavlm-base-plus/r1") == model_and_run("microsoft--wavlm-base-plus/r1") == \
        ("microsoft--wavlm-base-plus", "r1")
    assert model_and_run("wavlm/r1/") == ("wavlm", "r1")
    assert [model_and_run(bad) for bad in ("wavlm", "/r1", "a/b/c/r1")] == [None, None, None]
    assert find_runs(Path("/p"), "iemocap", ["microsoft/wavlm-base-plus/r1=Mine = best", "apc/r2="]) == [
        (RunId("iemocap", "microsoft--wavlm-base-plus", "r1"), "Mine = best"), (RunId("iemocap", "apc", "r2"), None)]
