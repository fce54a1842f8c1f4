"""Trust profiles: one radar chart per run, an overlay of all runs, and a CSV + Markdown table.

    python3 trustworthy/plot_spider.py --dataset iemocap --output_dir profiles \\
        [--project_dir P | --config config.yml] [--runs MODEL/RUN[=LABEL] ...] \\
        [--attack_method fgsm --snr 45 --privacy_attack gender] \\
        [--fairness_group speaker --fairness_metric statistical_parity] \\
        [--ranges uar=56:72 fairness=10:30 privacy=88:100 safety=40:100 gflops=0:48]

Runs: every <project_dir>/finetune/<dataset>/<model>/<run>/results.json, or those --runs names.
Each run's other results are found in the sibling trees (same <dataset>/<model>/<run> tail):

  finetune/<dataset>/<model>/<run>/results.json
      {"1": {...}, ..., "average": {"uar": %, ...}, "std": {"uar": %, ...}}
  fairness/<dataset>/<model>/<run>/results.json
      {"<fold>": {"speaker": <utils.fairness.fairness_report>, "gender": <...>},
       "average": {"speaker": {"statistical_parity": x, "equality_of_opportunity": y,
                               "demographic_parity": z},
                   "gender": {... null where not available, e.g. MELD}},
       "std": {same shape as "average"}}                     (metrics in [0, 1])
  attack/<attack_method>/<snr>/<dataset>/<model>/<run>/results.json
      {"<fold>": {"success_rate": %, ...}, "average": {"success_rate": %}, "std": {"success_rate": %}}
  privacy/<privacy_attack>/<dataset>/<model>/<run>/results.json
      {"<fold>": {"uar": %, ...}, "average": {"uar": %}, "std": {"uar": %}}
  flops/<dataset>/<model>/<run>/gflops.json
      {"gflops": x, "params_total": n, ...}

Axes (outward = more trustworthy on every axis):
  System Performance  emotion UAR (%), higher is better; inner end no lower than chance
  Fairness            100 x the fairness metric (default: speaker-wise statistical parity), lower is
                      better (plotted as is on a reversed axis, as the original did)
  Privacy             gender-inference UAR (%) from the backbone's features, lower is better
                      (outer end no lower than 50 %, i.e. no leak)
  Safety              adversarial attack success rate (%), lower is better
  Sustainability      GFLOPs of one forward pass, lower is better
A missing result file or value leaves that axis "n/a" for the run: no point, a note, no crash.
Ranges come from the data (shared by all charts, padded, rounded) unless --ranges gives them.
"""
import argparse
import csv
import io
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils.config import load_config  # noqa: E402
from utils.datasets import get_corpus  # noqa: E402
from utils.errors import TrustSerError, run_main  # noqa: E402
from utils.io import read_json, write_bytes, write_text  # noqa: E402


@dataclass(frozen=True)
class Axis:
    key: str                 # --ranges name and CSV column stem
    title: str
    higher_is_better: bool
    bounds: tuple[float, float]


AXES = [
    Axis("uar", "System Performance", True, (0.0, 100.0)),
    Axis("fairness", "Fairness", False, (0.0, 100.0)),
    Axis("privacy", "Privacy", False, (50.0, 100.0)),
    Axis("safety", "Safety", False, (0.0, 100.0)),
    Axis("gflops", "Sustainability", False, (0.0, math.inf)),
]
CSV_COLUMNS = {"uar": "uar_pct", "fairness": "fairness_pct", "privacy": "privacy_gender_uar_pct",
               "safety": "safety_success_pct", "gflops": "gflops"}
PRETTY_MODELS = {"wav2vec2_0": "Wav2vec 2.0", "wavlm": "WavLM", "apc": "APC", "tera": "TERA",
                 "whisper_tiny": "Whisper Tiny", "whisper_base": "Whisper Base", "whisper_small": "Whisper Small"}
COLORS = plt.get_cmap("tab10").colors


@dataclass
class RunProfile:
    model: str
    run: str
    label: str
    values: dict = field(default_factory=dict)   # axis key -> float | None
    stds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------- reading results

def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _dig(obj, keys: list[str]):
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def _read_mean_std(path: Path, keys: list[str], scale: float, notes: list[str],
                   averaged: bool) -> tuple[float | None, float | None]:
    """(scale * value, scale * std or None); None and a note where the file or number is absent.

    averaged: the value sits under "average" and its spread under "std"; else at the top level.
    """
    if not path.is_file():
        notes.append(f"missing {path}")
        return None, None
    data = read_json(path)
    top = ["average"] if averaged else []
    mean = _number(_dig(data, top + keys))
    if mean is None:
        notes.append(f"{path} has no number at {'.'.join(top + keys)}")
        return None, None
    std = _number(_dig(data, ["std"] + keys)) if averaged else None
    return scale * mean, None if std is None else scale * std


def _snr_folder(attack_root: Path, snr: str) -> Path:
    """attack/<method>/<snr>: the writer's str(snr) may be '45' or '45.0'; take the one that exists."""
    candidates = [snr]
    try:
        value = float(snr)
        candidates += [str(value)] + ([str(int(value))] if value.is_integer() else [])
    except ValueError:
        pass
    for name in candidates:
        if (attack_root / name).is_dir():
            return attack_root / name
    return attack_root / snr


def load_profile(project_dir: Path, dataset: str, model: str, run: str, label: str,
                 args: argparse.Namespace) -> RunProfile:
    tail = Path(dataset, model, run)
    root = Path(project_dir)
    profile = RunProfile(model, run, label)
    sources = {
        "uar": (root / "finetune" / tail / "results.json", ["uar"], 1.0, True),
        "fairness": (root / "fairness" / tail / "results.json", [args.fairness_group, args.fairness_metric],
                     100.0, True),
        "privacy": (root / "privacy" / args.privacy_attack / tail / "results.json", ["uar"], 1.0, True),
        "safety": (_snr_folder(root / "attack" / args.attack_method, args.snr) / tail / "results.json",
                   ["success_rate"], 1.0, True),
        "gflops": (root / "flops" / tail / "gflops.json", ["gflops"], 1.0, False),
    }
    for key, (path, keys, scale, averaged) in sources.items():
        profile.values[key], profile.stds[key] = _read_mean_std(path, keys, scale, profile.notes, averaged)
    return profile


def _parse_run_spec(spec: str) -> tuple[str, str, str | None]:
    match = re.fullmatch(r"([^/=]+)/([^/=]+)(?:=(.+))?", spec)
    if not match:
        raise TrustSerError(f"--runs entry '{spec}' must look like MODEL/RUN_NAME or MODEL/RUN_NAME=LABEL")
    return match.group(1), match.group(2), match.group(3)


def find_runs(project_dir: Path, dataset: str, specs: list[str] | None) -> list[tuple[str, str, str | None]]:
    finetune = project_dir / "finetune" / dataset
    if specs:
        return [_parse_run_spec(s) for s in specs]
    found = sorted(finetune.glob("*/*/results.json"))
    if not found:
        raise TrustSerError(f"no runs found: nothing matches {finetune}/*/*/results.json (or pass --runs)")
    return [(p.parent.parent.name, p.parent.name, None) for p in found]


def default_labels(runs: list[tuple[str, str, str | None]]) -> list[str]:
    """The given label, else the model's name, plus the run name when a model has several runs."""
    per_model = {}
    for model, _, _ in runs:
        per_model[model] = per_model.get(model, 0) + 1
    labels = []
    for model, run, label in runs:
        pretty = PRETTY_MODELS.get(model, model)
        labels.append(label or (pretty if per_model[model] == 1 else f"{pretty} ({run})"))
    return labels


# ---------------------------------------------------------------- axis ranges

def _nice_step(raw: float) -> float:
    """Smallest round step (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 x 10^k) that is >= raw."""
    exponent = math.floor(math.log10(raw))
    for mantissa in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8):
        if mantissa * 10 ** exponent >= raw * (1 - 1e-9):
            return mantissa * 10 ** exponent
    return 10 ** (exponent + 1)


def derive_range(values: list[float], bounds: tuple[float, float], floor: float) -> tuple[float, float]:
    """(low, high) covering the values with padding, on 4 round steps, within bounds and >= floor."""
    low_bound = max(bounds[0], floor)
    low, high = min(values), max(values)
    pad = 0.25 * (high - low) if high > low else max(0.1 * abs(high), 1.0)
    low, high = max(low - pad, low_bound), min(high + pad, bounds[1])
    step = _nice_step((high - low) / 4)
    start = math.floor(low / step) * step
    while start + 4 * step < high - 1e-9:
        step = _nice_step(step * 1.0001)
        start = math.floor(low / step) * step
    start, end = max(start, low_bound), start + 4 * step
    if end > bounds[1]:
        start, end = max(bounds[1] - 4 * step, low_bound), bounds[1]
    return start, end


def parse_ranges(specs: list[str] | None) -> dict[str, tuple[float, float]]:
    ranges = {}
    for spec in specs or []:
        match = re.fullmatch(r"(\w+)=(-?[\d.]+):(-?[\d.]+)", spec)
        if not match or match.group(1) not in CSV_COLUMNS:
            raise TrustSerError(f"--ranges entry '{spec}' must be AXIS=LOW:HIGH with AXIS one of "
                                f"{', '.join(CSV_COLUMNS)}, e.g. uar=56:72")
        low, high = float(match.group(2)), float(match.group(3))
        if not low < high:
            raise TrustSerError(f"--ranges entry '{spec}': LOW must be below HIGH")
        ranges[match.group(1)] = (low, high)
    return ranges


def axis_ranges(profiles: list[RunProfile], given: dict,
                chance_uar: float) -> dict[str, tuple[float, float] | None]:
    """Per axis the given range, else one derived from the runs' values; None for an axis without any."""
    ranges = {}
    for axis in AXES:
        values = [p.values[axis.key] for p in profiles if p.values[axis.key] is not None]
        floor = chance_uar if axis.key == "uar" else -math.inf
        ranges[axis.key] = given.get(axis.key) or (derive_range(values, axis.bounds, floor) if values else None)
    return ranges


def radius(axis: Axis, value: float, value_range: tuple[float, float]) -> float:
    """0 at the worse end of the range, 1 at the better end (clipped)."""
    low, high = value_range
    fraction = (value - low) / (high - low)
    return float(np.clip(fraction if axis.higher_is_better else 1 - fraction, 0.0, 1.0))


# ---------------------------------------------------------------- drawing

def _fmt(value: float) -> str:
    return f"{float(f'{value:.3g}'):g}"


def axis_label(axis: Axis, args: argparse.Namespace) -> str:
    detail = {
        "uar": "emotion UAR (%)",
        "fairness": f"{args.fairness_group} {args.fairness_metric.replace('_', ' ')} (%)",
        "privacy": f"{args.privacy_attack} inference UAR (%)",
        "safety": f"{args.attack_method.upper()} success at {args.snr} dB (%)",
        "gflops": "GFLOPs per utterance",
    }[axis.key]
    return f"{axis.title}\n{detail}"


def _angles() -> np.ndarray:
    return np.pi / 2 + 2 * np.pi * np.arange(len(AXES)) / len(AXES)


def _new_radar(ranges: dict, args: argparse.Namespace, missing: set[str] = frozenset()):
    fig = plt.figure(figsize=(7.2, 7.2))
    ax = fig.add_subplot(polar=True)
    angles = _angles()
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0], labels=[])
    ax.set_xticks(angles % (2 * np.pi), labels=[])
    ax.spines["polar"].set_color("0.6")
    for axis, angle in zip(AXES, angles):
        _axis_title(ax, angle, axis_label(axis, args) + ("\n(n/a)" if axis.key in missing else ""),
                    color="0.55" if axis.key in missing else "black")
        if ranges[axis.key] is None:
            continue
        low, high = ranges[axis.key]
        ticks = np.linspace(low, high, 5) if axis.higher_is_better else np.linspace(high, low, 5)
        for r, tick in zip([0.25, 0.5, 0.75, 1.0], ticks[1:]):
            ax.text(angle + 0.06 / r, r, _fmt(tick), fontsize=7.5, color="0.35", ha="center", va="center")
    return fig, ax


def _axis_title(ax, angle: float, text: str, color: str) -> None:
    """Axis name just outside the outer ring, aligned away from the chart so it never overlaps it."""
    x, y = math.cos(angle), math.sin(angle)
    ha = "center" if abs(x) < 0.7 else ("left" if x > 0 else "right")
    va = "bottom" if y > 0.7 else ("top" if y < -0.5 else "center")
    ax.text(angle, 1.12, text, ha=ha, va=va, fontsize=10, fontweight="bold", color=color,
            linespacing=1.3, multialignment="center")


def _plot_profile(ax, profile: RunProfile, ranges: dict, color, annotate: bool) -> None:
    points = [(angle, radius(axis, profile.values[axis.key], ranges[axis.key]), profile.values[axis.key])
              for axis, angle in zip(AXES, _angles()) if profile.values[axis.key] is not None]
    if not points:
        return
    thetas = [p[0] for p in points] + [points[0][0]]
    radii = [p[1] for p in points] + [points[0][1]]
    missing = [a.title for a in AXES if profile.values[a.key] is None]
    label = profile.label + (f" (n/a: {', '.join(missing)})" if missing else "")
    ax.plot(thetas, radii, color=color, linewidth=2, marker="o", label=label)
    ax.fill(thetas, radii, color=color, alpha=0.18)
    if annotate:
        for theta, r, value in points:
            ax.annotate(_fmt(value), (theta, r), textcoords="offset points", xytext=(0, 9), ha="center",
                        fontsize=9, fontweight="bold", color=color, zorder=5,
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=color, lw=0.8, alpha=0.9))


def draw_single(profile: RunProfile, ranges: dict, color, args: argparse.Namespace, path: Path) -> None:
    missing = {a.key for a in AXES if profile.values[a.key] is None}
    fig, ax = _new_radar(ranges, args, missing)
    _plot_profile(ax, profile, ranges, color, annotate=True)
    ax.set_title(profile.label, fontsize=18 if len(profile.label) <= 24 else 13, fontweight="bold", color=color,
                 pad=68)
    _footer(ax, args, y=-0.15)
    _save_png(fig, path)


def draw_overlay(profiles: list[RunProfile], ranges: dict, args: argparse.Namespace, path: Path) -> None:
    fig, ax = _new_radar(ranges, args, missing={key for key, r in ranges.items() if r is None})
    for i, profile in enumerate(profiles):
        _plot_profile(ax, profile, ranges, COLORS[i % len(COLORS)], annotate=False)
    ax.set_title(f"Trust profiles: {args.dataset}", fontsize=16, fontweight="bold", pad=68)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(3, len(profiles)), frameon=False,
              fontsize=10)
    _footer(ax, args, y=-0.155 - 0.05 * (1 + (len(profiles) - 1) // 3))
    _save_png(fig, path)


def _save_png(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def _footer(ax, args: argparse.Namespace, y: float) -> None:
    ax.text(0.5, y, f"{args.dataset}; outward = more trustworthy on every axis", transform=ax.transAxes,
            ha="center", va="top", fontsize=8.5, color="0.35")


# ---------------------------------------------------------------- tables

def _cell(value: float | None, std: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def table_csv(profiles: list[RunProfile]) -> str:
    out = io.StringIO()
    header = ["label", "pretrain_model", "run_name"]
    for axis in AXES:
        header += [CSV_COLUMNS[axis.key], CSV_COLUMNS[axis.key] + "_std"]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for p in profiles:
        row = [p.label, p.model, p.run]
        for axis in AXES:
            row += ["" if v is None else repr(v) for v in (p.values[axis.key], p.stds[axis.key])]
        writer.writerow(row)
    return out.getvalue()


def table_markdown(profiles: list[RunProfile], ranges: dict, args: argparse.Namespace) -> str:
    titles = [axis_label(a, args).replace("\n", ": ") for a in AXES]
    lines = ["| Model | Run | " + " | ".join(titles) + " |", "|" + "---|" * (len(AXES) + 2)]
    for p in profiles:
        cells = [_cell(p.values[a.key], p.stds[a.key]) for a in AXES]
        lines.append(f"| {p.label} | {p.run} | " + " | ".join(cells) + " |")
    direction = ", ".join(f"{a.title} {'higher' if a.higher_is_better else 'lower'} is better" for a in AXES)
    chart = "; ".join(f"{a.title} " + ("n/a" if ranges[a.key] is None else
                                       f"{_fmt(ranges[a.key][0])} to {_fmt(ranges[a.key][1])}") for a in AXES)
    return "\n".join(lines) + f"\n\n{direction}.\n\nChart ranges: {chart}.\n"


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Draw trust-profile radar charts from finished runs.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--project_dir", default=None, help="default: project_dir of --config")
    p.add_argument("--config", default=None, help="config.yml (default: the repo's config/config.yml)")
    p.add_argument("--runs", nargs="+", default=None, metavar="MODEL/RUN[=LABEL]",
                   help="runs to draw (default: every run under finetune/<dataset>)")
    p.add_argument("--attack_method", default="fgsm")
    p.add_argument("--snr", default="45", help="SNR (dB) of the attack results to read")
    p.add_argument("--privacy_attack", default="gender")
    p.add_argument("--fairness_group", default="speaker", choices=["speaker", "gender"])
    p.add_argument("--fairness_metric", default="statistical_parity",
                   choices=["statistical_parity", "equality_of_opportunity", "demographic_parity"])
    p.add_argument("--ranges", nargs="+", default=None, metavar="AXIS=LOW:HIGH",
                   help=f"fixed axis ranges in the axis' units; AXIS one of {', '.join(CSV_COLUMNS)}")
    return p.parse_args(argv)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "run"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    project_dir = Path(args.project_dir) if args.project_dir else Path(load_config(args.config)["project_dir"])
    given_ranges = parse_ranges(args.ranges)
    runs = find_runs(project_dir, args.dataset, args.runs)
    profiles = [load_profile(project_dir, args.dataset, model, run, label, args)
                for (model, run, _), label in zip(runs, default_labels(runs))]
    for profile in profiles:
        if all(v is None for v in profile.values.values()):
            raise TrustSerError(f"no results at all for {profile.model}/{profile.run} under {project_dir}")
        for note in profile.notes:
            print(f"{profile.label}: n/a: {note}", file=sys.stderr)
    ranges = axis_ranges(profiles, given_ranges, 100.0 / get_corpus(args.dataset, project_dir).num_classes)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, profile in enumerate(profiles):
        draw_single(profile, ranges, COLORS[i % len(COLORS)], args, out / f"{_slug(profile.label)}.png")
    draw_overlay(profiles, ranges, args, out / "compare.png")
    write_text(out / "trust_profile.csv", table_csv(profiles))
    write_text(out / "trust_profile.md", table_markdown(profiles, ranges, args))
    print(f"wrote {len(profiles) + 1} charts and trust_profile.csv/.md to {out}")


if __name__ == "__main__":
    run_main(main)
