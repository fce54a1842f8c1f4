import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from utils.errors import TrustSerError

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
               {"1": {"uar": uar}, "average": {"uar": uar, "acc": uar + 1}, "std": {"uar": uar_std}})
        fairness = {"statistical_parity": sp, "equality_of_opportunity": sp / 2, "demographic_parity": sp / 3}
        _write(root / "fairness" / run_tail / "results.json",
               {"1": {"speaker": fairness}, "average": {"speaker": fairness, "gender": fairness},
                "std": {"speaker": {k: 0.01 for k in fairness}}})
        _write(root / "attack" / "fgsm" / "45" / run_tail / "results.json",
               {"average": {"success_rate": success}, "std": {"success_rate": 3.0}})
        if model != skip_privacy_for:
            _write(root / "privacy" / "gender" / run_tail / "results.json",
                   {"average": {"uar": gender_uar}, "std": {"uar": 0.5}})
        _write(root / "flops" / run_tail / "gflops.json", {"gflops": gflops, "params_total": 1000})
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd="/")


@pytest.fixture(scope="module")
def spider():
    spec = importlib.util.spec_from_file_location("plot_spider", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_image(path: Path) -> None:
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] > 500 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05            # not a blank canvas


def test_profiles_tables_and_charts(tmp_path):
    project = _fake_project(tmp_path / "project", skip_privacy_for="apc")
    out = tmp_path / "out"
    result = _run("--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "APC: n/a: missing" in result.stderr and "privacy" in result.stderr
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
    assert float(rows["wavlm"]["privacy_gender_uar_pct"]) == pytest.approx(91.7)
    assert rows["apc"]["privacy_gender_uar_pct"] == ""

    markdown = (out / "trust_profile.md").read_text()
    assert "| WavLM | " + RUN + " | 66.43 ± 1.20 | 15.30 ± 1.00 | 91.70 ± 0.50 | 62.50 ± 3.00 | 41.60 |" in markdown
    assert "| APC | " + RUN + " | 58.21 ± 2.10 | 22.40 ± 1.00 | n/a | 88.00 ± 3.00 | 8.30 |" in markdown


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
    assert "System Performance 50 to 70" in markdown and "Sustainability 0 to 48" in markdown


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
    with pytest.raises(TrustSerError, match="no results at all for wavlm/no_such_run"):
        spider.main(common + ["--runs", "wavlm/no_such_run"])
    with pytest.raises(TrustSerError, match="MODEL/RUN_NAME"):
        spider.main(common + ["--runs", "wavlm"])
    (project / "flops" / "iemocap" / "apc" / RUN / "gflops.json").write_text("{not json")
    with pytest.raises(TrustSerError, match="gflops.json is not valid JSON"):
        spider.main(common)


def test_axis_missing_for_every_run(tmp_path, spider):
    project = _fake_project(tmp_path / "project")
    for model in MODELS:
        (project / "privacy" / "gender" / "iemocap" / model / RUN / "results.json").unlink()
    out = tmp_path / "out"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out)])
    _assert_image(out / "compare.png")
    assert "Privacy n/a" in (out / "trust_profile.md").read_text()


def test_snr_folder_written_as_float_is_found(tmp_path, spider):
    project = _fake_project(tmp_path / "project")
    attack = project / "attack" / "fgsm"
    (attack / "45").rename(attack / "45.0")
    out = tmp_path / "out"
    spider.main(["--dataset", "iemocap", "--project_dir", str(project), "--output_dir", str(out)])
    with open(out / "trust_profile.csv") as f:
        rows = {row["pretrain_model"]: row for row in csv.DictReader(f)}
    assert float(rows["wavlm"]["safety_success_pct"]) == pytest.approx(62.5)


def test_derived_ranges_cover_data_round_and_respect_floors(spider):
    low, high = spider.derive_range([58.21, 66.43], (0.0, 100.0), floor=25.0)
    assert low <= 58.21 and high >= 66.43 and low >= 25.0
    step = (high - low) / 4
    assert step == pytest.approx(spider._nice_step(step))
    assert spider.derive_range([26.0, 30.0], (0.0, 100.0), floor=25.0)[0] == 25.0
    assert spider.derive_range([99.0], (50.0, 100.0), floor=-1e9)[1] == 100.0
    assert spider.derive_range([51.0, 52.0], (50.0, 100.0), floor=-1e9)[0] >= 50.0
    axis = spider.AXES[1]                                        # fairness: lower is better
    assert spider.radius(axis, 10.0, (10.0, 30.0)) == 1.0
    assert spider.radius(axis, 30.0, (10.0, 30.0)) == 0.0
    assert spider.radius(spider.AXES[0], 70.0, (50.0, 70.0)) == 1.0
