"""The per-run report: training curves and confusion matrix of each run, and one report.md per dataset with the
trust table, the radar charts and links to every figure."""
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.ticker import MaxNLocator
import numpy as np

from utils.core.errors import TrustSerError
from utils.runs.predictions import read_predictions
from utils.core.io import read_json, write_csv, write_text
from utils.runs.paths import RunFolder, finetune_folder
from utils.reporting.figures import plt, save_png
from utils.reporting.profile import RunProfile, cell, folds_text, table_markdown, table_rows
from utils.reporting.radar import COLORS, axis_ranges, draw_overlay, draw_single, own_ranges
from utils.reporting.trust_figures import draw_reliability, draw_robustness
from utils.runs.stages import STAGE, Measurement, Variant, dig
from utils.trust.calibration import pooled_predictions

SPLIT_COLORS = {"train": "tab:blue", "dev": "tab:orange", "test": "tab:green"}


PRIVACY_NOTE = (
    "Privacy, two probes (higher UAR = more gender leaks, 50% = none). The linear probe, the axis for "
    "`--protocol fixed` runs, is a logistic regression on the emotion model's own utterance embedding, "
    "cross-validated over every speaker of the fold with no speaker on both sides, so it needs no dev set. "
    "The original's probe, the axis for `--protocol original` runs and listed for every run, is a CNN head trained "
    "on the backbone's hidden states and scored at its best epoch by dev UAR, which with few dev speakers can "
    "predict one gender for everything (50%, marked \"probe collapsed\").")


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


@dataclass(frozen=True)
class AxisChoice:
    """Which axes the charts draw and how their ranges are chosen: --axes, --ranges, the corpus' class count
    (chance level), --zoom."""
    axes: list
    given: dict
    num_classes: int
    zoom: bool


def chart_files(profiles: list[RunProfile], out: Path) -> dict[str, Path]:
    """Each run's chart (and report folder), named after its label; labels that would share a file (also on a
    file system that ignores case) are refused."""
    charts, taken = {}, {"compare": "the comparison chart", "trust_profile": "the report's chart folder"}
    for p in profiles:
        name = slug(p.label)
        if p.label in charts:
            raise TrustSerError(f"--runs: two runs are labelled {p.label!r}; give them different labels "
                                f"(MODEL/RUN=LABEL)")
        if name.lower() in taken:
            raise TrustSerError(f"--runs: the label {p.label!r} gives the chart file {name}.png, as "
                                f"{taken[name.lower()]} does; give the runs different labels (MODEL/RUN=LABEL)")
        taken[name.lower()] = f"the label {p.label!r}"
        charts[p.label] = out / f"{name}.png"
    return charts


def write_trust_profile(profiles: list[RunProfile], choice: AxisChoice, variant: Variant, dataset: str,
                        out: Path) -> tuple[dict[str, Path], dict]:
    """A radar per run (by label) on its own ranges, compare.png with all runs on common ones, trust_profile.csv
    and .md; returns the charts and the common ranges."""
    charts = chart_files(profiles, out)
    for i, profile in enumerate(profiles):
        own = own_ranges(profile, choice.given, choice.num_classes, choice.zoom, choice.axes)
        draw_single(profile, own, COLORS[i % len(COLORS)], dataset, charts[profile.label])
    ranges = axis_ranges(profiles, choice.given, choice.num_classes, choice.zoom, choice.axes)
    draw_overlay(profiles, ranges, variant, dataset, out / "compare.png")
    write_csv(out / "trust_profile.csv", table_rows(profiles))
    write_text(out / "trust_profile.md", table_markdown(profiles, ranges, variant))
    return {**charts, "compare": out / "compare.png"}, ranges


# ---------------------------------------------------------------- training curves

@dataclass
class FoldHistory:
    fold: int
    epochs: list[int]
    curves: dict            # (split, "uar" | "loss") -> list of values, one per epoch
    best_epoch: int | None


def read_history(path: Path, fold: int) -> FoldHistory:
    """Per-epoch scores from finetune's fold_k.json ({"0": {"train": {...}, "dev": ..., "test": ...}, ..., "best"})."""
    data = read_json(path)
    epochs = sorted(int(k) for k in data if k.isdigit())
    curves = {(split, metric): [_score(data[str(e)], split, metric) for e in epochs]
              for split in SPLIT_COLORS for metric in ("uar", "loss")}
    best = data.get("best", {}).get("best_epoch") if isinstance(data.get("best"), dict) else None
    return FoldHistory(fold, epochs, curves, best if isinstance(best, int) else None)


def _score(epoch: dict, split: str, metric: str) -> float:
    value = epoch.get(split, {}).get(metric) if isinstance(epoch, dict) else None
    return float(value) if isinstance(value, (int, float)) else float("nan")


def fold_histories(run: RunFolder, folds: list[int]) -> list[FoldHistory]:
    return [read_history(run.fold_json(f), f) for f in folds if run.fold_json(f).is_file()]


def draw_training_curves(histories: list[FoldHistory], title: str, path: Path) -> None:
    """UAR (top) and loss (bottom) per epoch, one column per fold; the best epoch (by dev UAR) dashed."""
    fig, axes = plt.subplots(2, len(histories), figsize=(2.9 * len(histories) + 0.8, 5.6), squeeze=False,
                             sharex="col", sharey="row")
    for col, history in enumerate(histories):
        for row, metric in enumerate(("uar", "loss")):
            ax = axes[row][col]
            for split, color in SPLIT_COLORS.items():
                ax.plot(history.epochs, history.curves[(split, metric)], color=color, linewidth=1.5,
                        label=split if (row, col) == (0, 0) else None)
            if history.best_epoch is not None:
                ax.axvline(history.best_epoch, color="0.3", linestyle="--", linewidth=1,
                           label="best epoch (dev UAR)" if (row, col) == (0, 0) else None)
            ax.grid(alpha=0.3)
            if row == 0:
                best = f", best epoch {history.best_epoch}" if history.best_epoch is not None else ""
                ax.set_title(f"fold {history.fold}{best}", fontsize=10)
            else:
                ax.set_xlabel("epoch")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][0].set_ylabel("UAR (%)")
        axes[1][0].set_ylabel("loss")
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.legend(loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.04))
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    save_png(fig, path)


# ---------------------------------------------------------------- confusion matrix

def confusion_counts(run: RunFolder, folds: list[int], num_classes: int) -> tuple[np.ndarray, list[int]]:
    """Label x prediction counts summed over the folds' test predictions, and the folds found."""
    counts, found = np.zeros((num_classes, num_classes), dtype=int), []
    for fold in folds:
        path = run.predictions(fold)
        if not path.is_file():
            continue
        for row in read_predictions(path):
            try:
                counts[row["label"], row["prediction"]] += 1
            except IndexError:
                raise TrustSerError(f"{path}: row {row['key']} has a class beyond the corpus' {num_classes}") from None
        found.append(fold)
    return counts, found


def row_normalised(counts: np.ndarray) -> np.ndarray:
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)


def draw_confusion(counts: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    share = row_normalised(counts)
    size = 1.1 * len(class_names) + 2.2
    fig, ax = plt.subplots(figsize=(size, size - 0.6))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(share):
        ax.text(j, i, f"{value:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=8.5,
                color="white" if value > 0.6 else "black")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30 if max(map(len, class_names)) > 4 else 0)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (rows sum to 1)")
    ax.set_title(title, fontsize=10, fontweight="bold")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    save_png(fig, path)


# ---------------------------------------------------------------- report.md

@dataclass
class RunFigures:
    profile: RunProfile
    curves: Path | None
    confusion: Path | None
    folds: list[int]            # folds with test predictions (the confusion matrix's)
    reliability: Path | None = None
    robustness: Path | None = None

    def figures(self) -> list[tuple[str, Path | None]]:
        return [("Training curves", self.curves), ("Confusion matrix", self.confusion),
                ("Reliability diagram", self.reliability), ("Robustness", self.robustness)]


def run_folds(run: RunFolder, corpus_folds: list[int]) -> list[int]:
    """The folds the run's results.json aggregates (a one-split corpus may have several seeded runs), else the
    corpus' folds."""
    meta = read_json(run.results).get("meta", {}) if run.results.is_file() else {}
    folds = [f for f in meta.get("folds_done", []) + meta.get("folds_missing", []) if isinstance(f, int)]
    return sorted(folds) or corpus_folds


def draw_run(project_dir: Path, profile: RunProfile, corpus_folds: list[int], class_names: list[str],
             out: Path) -> RunFigures:
    run = finetune_folder(project_dir, profile.run)
    folds = run_folds(run, corpus_folds)
    histories = fold_histories(run, folds)
    curves = confusion = None
    if histories:
        curves = out / "training_curves.png"
        draw_training_curves(histories, f"{profile.label}: training curves ({profile.run.name})", curves)
    counts, found = confusion_counts(run, folds, len(class_names))
    if found:
        confusion = out / "confusion_matrix.png"
        draw_confusion(counts, class_names, f"{profile.label}: test predictions, {folds_text(len(found))} summed "
                       f"({counts.sum()} utterances)", confusion)
    return RunFigures(profile, curves, confusion, found, draw_run_reliability(run, profile.label, found, out),
                      draw_run_robustness(project_dir, profile, out))


def draw_run_reliability(run: RunFolder, label: str, folds: list[int], out: Path) -> Path | None:
    """The reliability diagram of the folds' test probabilities pooled (None without predictions)."""
    pooled = pooled_predictions(run, folds)
    if pooled is None:
        return None
    draw_reliability(*pooled, f"{label}: test probabilities, {folds_text(len(folds))} pooled", out / "reliability.png")
    return out / "reliability.png"


def draw_run_robustness(project_dir: Path, profile: RunProfile, out: Path) -> Path | None:
    """UAR under perturbation from the robustness stage's results.json (None where it did not run)."""
    path = STAGE["robustness"].result_path(project_dir, profile.run)
    if not path.is_file():
        return None
    results = read_json(path)
    folds = dig(results, ["meta", "folds_done"]) or []
    title = f"{profile.label}: test UAR under perturbation ({folds_text(len(folds))})"
    return out / "robustness.png" if draw_robustness(results, title, out / "robustness.png") else None


def why_not_available(m: Measurement) -> str:
    return f" ({m.note})" if m.value is None and m.note else ""


def report_markdown(dataset: str, runs: list[RunFigures], charts: dict[str, Path], ranges: dict,
                    variant: Variant, root: Path) -> str:
    def link(path: Path) -> str:
        return path.relative_to(root).as_posix()

    profiles = [r.profile for r in runs]
    lines = [f"# Trust-SER report: {dataset}", "", "## Trust profile", "",
             table_markdown(profiles, ranges, variant).rstrip(), "", PRIVACY_NOTE, "",
             f"![All runs]({link(charts['compare'])})", ""]
    for r in runs:
        p = r.profile
        lines += [f"## {p.name}", "", f"Run `{p.run.pretrain_model}/{p.run.name}`"
                  + (" (random initial weights: a pipeline check, not a result)" if p.random_init else "") + "."
                  + (" It was trained on splits that `train_split/` no longer holds (the corpus was split again "
                     "since): its numbers do not compare with runs on the present splits." if p.stale_splits else ""),
                  ""]
        lines += [f"- {STAGE[k].title}: {cell(p.measurements[k], p.folds)}{why_not_available(p.measurements[k])}"
                  for k in ranges]
        if p.original_probe and "privacy" in ranges:
            lines.append(f"- Privacy, the original's probe: {cell(p.original_probe, p.folds)}")
        lines += ["", f"- Radar: [{link(charts[p.label])}]({link(charts[p.label])})"]
        for name, path in r.figures():
            lines.append(f"- {name}: " + (f"[{link(path)}]({link(path)})" if path else "n/a (no results for it)"))
        lines += ["", f"![{p.label} radar]({link(charts[p.label])})", ""]
        lines += [f"![{p.label} {name.lower()}]({link(path)})" for name, path in r.figures() if path]
        lines.append("")
    return "\n".join(lines)
