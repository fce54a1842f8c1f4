import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from utils.reporting import report
from utils.reporting.report import FoldHistory, confusion_counts, read_history, row_normalised
from utils.runs.paths import RunFolder

REPO = Path(__file__).resolve().parents[1]
RUN = "lr00005_ep30_cnn_conv2_hid128_mean_frozen_randinit"
CLASSES = ["neu", "sad", "ang", "hap"]
# (label, prediction) pairs of each fold's test set
PREDICTIONS = {1: [(0, 0), (0, 1), (1, 1), (2, 2), (3, 3), (3, 2)], 2: [(0, 0), (1, 1), (1, 1), (2, 3), (3, 3)]}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _history(num_epochs: int, best: int) -> dict:
    epochs = {str(e): {split: {"loss": 1.4 - 0.1 * e, "uar": 25.0 + 10 * e} for split in ("train", "dev", "test")}
              for e in range(num_epochs)}
    return {**epochs, "best": {"uar": 55.0, "best_epoch": best}}


def _finetune_run(project: Path, model: str, folds: dict) -> Path:
    run_dir = project / "finetune" / "demo" / model / RUN
    for fold, pairs in folds.items():
        _write(run_dir / f"fold_{fold}.json", json.dumps(_history(4, best=fold)))
        rows = "".join(f"u{i},spk{i},F,{CLASSES[label]},{CLASSES[pred]},0.25,0.25,0.25,0.25\n"
                       for i, (label, pred) in enumerate(pairs))
        _write(run_dir / f"fold_{fold}_test_predictions.csv",
               "key,speaker,gender,label,prediction," + ",".join(f"prob_{c}" for c in CLASSES) + "\n" + rows)
    _write(run_dir / "results.json", json.dumps({"average": {"uar": 55.0}, "std": {"uar": 1.5},
                                                  "meta": {"folds_done": sorted(folds), "flags": {}}}))
    return run_dir


def test_history_and_confusion_numbers(tmp_path):
    run_dir = _finetune_run(tmp_path, "tera", PREDICTIONS)
    history = read_history(run_dir / "fold_2.json", 2)
    assert history.epochs == [0, 1, 2, 3] and history.best_epoch == 2
    assert history.curves[("dev", "uar")] == [25.0, 35.0, 45.0, 55.0]
    assert history.curves[("test", "loss")] == pytest.approx([1.4, 1.3, 1.2, 1.1])
    counts, found = confusion_counts(RunFolder(run_dir), [1, 2, 3, 4, 5], len(CLASSES))
    assert found == [1, 2]
    assert counts.tolist() == [[2, 1, 0, 0], [0, 3, 0, 0], [0, 0, 1, 1], [0, 0, 1, 2]]
    share = row_normalised(counts)
    assert share[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert np.allclose(share.sum(axis=1), 1)


@pytest.mark.slow
def test_training_curves_mark_whole_epochs_only(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report, "save_png", lambda fig, path: figures.append(fig))
    curves = {(split, metric): [1.0, 2.0, 3.0] for split in ("train", "dev", "test") for metric in ("uar", "loss")}
    report.draw_training_curves([FoldHistory(1, [0, 1, 2], curves, 0)], "t", tmp_path / "curves.png")
    for ax in figures[0].axes:
        assert [t for t in ax.get_xticks() if 0 <= t <= 2] == [0, 1, 2]


def test_report_writes_figures_and_markdown(tmp_path):
    project = tmp_path / "project"
    _finetune_run(project, "tera", PREDICTIONS)
    _finetune_run(project, "whisper_tiny", {1: PREDICTIONS[1]})
    _write(project / "flops" / "demo" / "tera" / RUN / "gflops.json", json.dumps({"gflops": 3.5}))
    names = ["white_20db", "white_0db", "babble_10db", "reverb_300ms", "telephone"]
    uar = {n: {"uar": u} for n, u in zip(names, (50.0, 30.0, 40.0, 45.0, 52.0))}
    _write(project / "robustness" / "demo" / "tera" / RUN / "results.json", json.dumps(
        {"average": {"clean": {"uar": 55.0}, "perturbations": uar, "mean_uar_drop": 11.6}, "std": {},
         "meta": {"folds_done": [1, 2], "robustness": {"perturbations": names}}}))
    _write(project / "attack" / "pgd" / "30" / "demo" / "tera" / RUN / "results.json",
           json.dumps({"average": {"success_rate": 40.0}}))
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(REPO / "trustworthy" / "report.py"), "--dataset", "demo",
                           "--project_dir", str(project), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "report.md")
    figures = ["TERA/training_curves.png", "TERA/confusion_matrix.png", "Whisper_Tiny/training_curves.png",
               "Whisper_Tiny/confusion_matrix.png", "trust_profile/compare.png", "trust_profile/TERA.png",
               "trust_profile/Whisper_Tiny.png", "TERA/reliability.png", "Whisper_Tiny/reliability.png",
               "TERA/robustness.png"]
    for name in figures:
        image = mpimg.imread(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 200 and image[..., :3].std() > 0.05, name
    report = (out / "report.md").read_text()
    for name in figures:
        assert f"]({name})" in report, name
    assert not (out / "Whisper_Tiny" / "robustness.png").exists() and "- Robustness: n/a" in report
    assert "| TERA (random init) | " + RUN + " | 2 | 55.00 ± 1.50 | n/a | n/a | n/a | 3.50 |" in report
    # one fold: no spread, whatever results.json holds
    assert "| Whisper Tiny (random init) | " + RUN + " | 1 | 55.00 | n/a | n/a | n/a | n/a |" in report
    assert "## Whisper Tiny (random init)" in report and "- System Performance: 55.00\n" in report
    # an axis without a value says why, and where the run has the results of another attack, which flags show them
    assert (f"- Safety: n/a (missing {project}/attack/fgsm/45/demo/tera/{RUN}/results.json; it has safety results "
            f"for pgd at 30 dB (--attack_method pgd --snr 30))\n") in report
    assert f"- Safety: n/a (missing {project}/attack/fgsm/45/demo/whisper_tiny/{RUN}/results.json)\n" in report


def test_characters_no_font_has_are_named_once(tmp_path, caplog):
    from utils.reporting.figures import plt, save_png
    for name in ("a", "b"):
        fig, ax = plt.subplots()
        ax.set_title("\ue000\ue001 \ue000")          # private-use characters: in no font
        with warnings.catch_warnings():
            warnings.simplefilter("error")              # matplotlib's per-character warnings stay inside
            with caplog.at_level(logging.WARNING, logger="trust-ser"):
                save_png(fig, tmp_path / f"{name}.png")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{tmp_path / 'a.png'}: no installed font has \ue000 \ue001, drawn as boxes; install one that "
                     f"does (e.g. Noto Sans CJK), it is then used for them"]
    assert mpimg.imread(tmp_path / "b.png").ndim == 3
