"""Radar charts of trust profiles: one axis per trust stage, outward = more trustworthy on every axis.

Each axis runs from its worse end at the centre to its better end at the rim. A value outside its axis'
range is drawn at the end it passed, with a hollow marker and its true value; a privacy probe that
collapsed to one class is a hollow cross outside the polygon.
"""
import math
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib.patheffects import withStroke
import numpy as np

from utils.core.errors import TrustSerError
from utils.core.io import SAVED_RELATIVE_ERROR
from utils.reporting.figures import plt, save_png
from utils.reporting.profile import STALE_SPLITS, RunProfile, axis_label, fmt, fold_count, folds_text, shown_variant
from utils.runs.stages import STAGE, STAGES, TrustStage, Variant

COLORS = plt.get_cmap("tab10").colors
LINESTYLES = ("-", "--", ":", "-.")     # the overlay's runs after the first ten: colours again, other lines
DEFAULT_AXES = tuple(s.key for s in STAGES if s.default_axis)     # the original's five
AXIS_ALIASES = {"sustainability": "gflops", "performance": "uar"}
LEGEND_WIDTH = 34    # characters of a legend line, where entries allow
HOLE = 0.25         # empty disc at the centre (in radius units), where each axis' inner value is written


# ---------------------------------------------------------------- ranges and ticks

def nice_step(raw: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k that is >= raw (> 0)."""
    exponent = math.floor(math.log10(raw))
    return next(m * 10 ** exponent for m in (1, 2, 2.5, 5, 10) if m * 10 ** exponent >= raw * (1 - 1e-9))


def round_up(value: float) -> float:
    """A round upper end (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 x 10^k) at or above value; 1 where nothing is above 0."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    return next(m * 10 ** exponent for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)
                if m * 10 ** exponent >= value * (1 - 1e-9))


def natural_range(stage: TrustStage, values: list[float], num_classes: int) -> tuple[float, float]:
    """The stage's own scale (utils.runs.stages); an open upper end becomes a round value at or above the
    largest run."""
    low, high = stage.natural_range(num_classes)
    return low, round_up(max(values)) if math.isinf(high) else high


def zoom_range(stage: TrustStage, values: list[float], num_classes: int) -> tuple[float, float]:
    """A tight range on round steps around the values (for close runs); within the natural scale unless a
    value lies outside it, never below 0 and, for percentages, never above 100."""
    natural_low, _ = stage.natural_range(num_classes)
    lowest, highest = min(values), max(values)
    pad = 0.25 * (highest - lowest) if highest > lowest else max(0.05 * abs(highest), 0.5)
    floor = max(0.0, min(natural_low, lowest))
    ceiling = max(100.0, highest) if stage.unit == "%" else math.inf
    low, high = max(lowest - pad, floor), min(highest + pad, ceiling)
    step = nice_step((high - low) / 4)
    return max(math.floor(low / step) * step, floor), min(math.ceil(high / step) * step, ceiling)


def parse_ranges(specs: list[str] | None) -> dict[str, tuple[float, float]]:
    """--ranges AXIS=LOW:HIGH entries."""
    ranges = {}
    for spec in specs or []:
        match = re.fullmatch(r"(\w+)=(-?\d+(?:\.\d*)?|-?\.\d+):(-?\d+(?:\.\d*)?|-?\.\d+)", spec)
        axis = AXIS_ALIASES.get(match.group(1), match.group(1)) if match else None
        if axis not in STAGE:
            raise TrustSerError(f"--ranges entry '{spec}' must be AXIS=LOW:HIGH with AXIS one of "
                                f"{', '.join(list(STAGE) + list(AXIS_ALIASES))}, e.g. uar=56:72")
        low, high = float(match.group(2)), float(match.group(3))
        if not low < high:
            raise TrustSerError(f"--ranges entry '{spec}': LOW must be below HIGH")
        ranges[axis] = (low, high)
    return ranges


def parse_axes(spec: str | None) -> list[str]:
    """--axes uar,fairness,...: the stage keys to draw, in order (default: the table's default axes)."""
    if not spec:
        return list(DEFAULT_AXES)
    axes = [AXIS_ALIASES.get(a, a) for a in (x.strip() for x in spec.split(",")) if a]
    names = ", ".join(list(STAGE) + list(AXIS_ALIASES))
    unknown = [a for a in axes if a not in STAGE]
    if unknown:
        raise TrustSerError(f"--axes: unknown axis {', '.join(unknown)}; choose from {names}")
    if len(set(axes)) != len(axes) or len(axes) < 3:
        raise TrustSerError(f"--axes {spec}: a radar needs at least 3 different axes (from {names})")
    return axes


def axis_ranges(profiles: list[RunProfile], given: dict, num_classes: int, zoom: bool,
                axes: list[str] = DEFAULT_AXES) -> dict[str, tuple[float, float] | None]:
    """Per axis shown (stage keys, in drawing order): the --ranges one, else the natural (or zoomed) range; None
    where no run has a value."""
    ranges = {}
    for stage in (STAGE[k] for k in axes):
        values = [p.value(stage.key) for p in profiles if p.value(stage.key) is not None]
        derive = zoom_range if zoom else natural_range
        ranges[stage.key] = given.get(stage.key) or (derive(stage, values, num_classes) if values else None)
    return ranges


def own_ranges(profile: RunProfile, given: dict, num_classes: int, zoom: bool, axes: list[str]) -> dict:
    """Ranges of a run's own chart: as axis_ranges for the run alone, except that an axis open at the top (0 to
    the largest run, rounded up, which would put the run at the centre) runs to the metric's largest possible
    value (fairness: 100 %), or, where there is none (GFLOPs), to about twice the run's value."""
    ranges = axis_ranges([profile], given, num_classes, zoom, axes)
    for key in axes:
        stage, value = STAGE[key], profile.value(key)
        low, high = stage.natural_range(num_classes)
        if zoom or key in given or value is None or not math.isinf(high):
            continue
        ranges[key] = (low, stage.bound if math.isfinite(stage.bound) else round_up(2 * value))
    return ranges


def ticks(low: float, high: float) -> list[float]:
    """Both ends, and the round values between them that are not crowding an end."""
    step = nice_step((high - low) / 5)
    margin = 0.12 * (high - low)
    inner = [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)]
    return [low] + [t for t in inner if low + margin < t < high - margin] + [high]


@dataclass(frozen=True)
class Point:
    radius: float       # 0 at the worse end of the range, 1 at the better end
    off_scale: int      # -1 beyond the worse end, +1 beyond the better end, 0 inside


def place(stage: TrustStage, value: float, value_range: tuple[float, float]) -> Point:
    """Where the value sits on its spoke. An end the value meets within the precision results are saved with is
    reached, not passed (chance-level UAR, saved as 33.3333, lies on the 100/3 end)."""
    low, high = value_range
    if any(abs(value - end) <= SAVED_RELATIVE_ERROR * abs(end) for end in value_range):
        value = min(max(value, low), high)
    fraction = (value - low) / (high - low)
    r = fraction if stage.higher_is_better else 1 - fraction
    clipped = float(np.clip(r, 0.0, 1.0))
    return Point(clipped, 0 if clipped == r else (1 if r > 1 else -1))


# ---------------------------------------------------------------- drawing

def _axes(ranges: dict) -> list[tuple[TrustStage, float]]:
    """(stage, spoke angle) of each axis shown: the keys of ranges, counter-clockwise from the top."""
    angles = np.pi / 2 + 2 * np.pi * np.arange(len(ranges)) / len(ranges)
    return [(STAGE[k], float(a)) for k, a in zip(ranges, angles)]


def _side(angle: float, ccw: bool) -> tuple[float, float, str, str]:
    """Unit offset perpendicular to a spoke (counter-clockwise side or the other) and the text alignment
    that keeps text on that side."""
    dx, dy = (-math.sin(angle), math.cos(angle)) if ccw else (math.sin(angle), -math.cos(angle))
    ha = "left" if dx > 0.3 else "right" if dx < -0.3 else "center"
    va = "bottom" if dy > 0.3 else "top" if dy < -0.3 else "center"
    return dx, dy, ha, va


def _new_radar(ranges: dict, variant: Variant):
    fig = plt.figure(figsize=(7.5, 7.5))
    ax = fig.add_subplot(polar=True)
    ax.set_ylim(0, 1)
    ax.set_rorigin(-HOLE)
    ax.set_yticks([])
    ax.set_xticks([a % (2 * np.pi) for _, a in _axes(ranges)], labels=[])
    ax.xaxis.grid(True, color="0.75", linewidth=0.8)
    # the rim drawn from the top spoke round: the polar spine closes at 0 degrees, between two spokes, where the
    # overlapping ends of its path leave a dark dot that reads as a stray tick
    ax.spines["polar"].set_visible(False)
    ax.plot(np.pi / 2 + np.linspace(0, 2 * np.pi, 721), np.ones(721), color="0.6", linewidth=0.8, clip_on=False,
            zorder=1)
    ax.spines["inner"].set_color("0.75")
    for stage, angle in _axes(ranges):
        missing = ranges[stage.key] is None
        _axis_title(ax, angle, axis_label(stage.key, variant) + ("\n(n/a)" if missing else ""),
                    color="0.55" if missing else "black")
        if not missing:
            _axis_ticks(ax, stage, angle, ranges[stage.key])
    return fig, ax


def _axis_ticks(ax, stage: TrustStage, angle: float, value_range: tuple[float, float]) -> None:
    """Tick marks across the spoke, their values on its counter-clockwise side (values of runs go on the other)."""
    dx, dy, ha, va = _side(angle, ccw=True)
    for tick in ticks(*value_range):
        r = place(stage, tick, value_range).radius
        ax.plot([angle], [r], marker=(2, 0, math.degrees(angle)), markersize=6, color="0.55", mew=0.8, zorder=2)
        ax.annotate(fmt(tick), (angle, r), xytext=(6 * dx, 6 * dy), textcoords="offset points", ha=ha, va=va,
                    fontsize=7.5, color="0.3", zorder=5, path_effects=[withStroke(linewidth=2.5, foreground="white")])


def _axis_title(ax, angle: float, text: str, color: str) -> None:
    """Axis name just outside the rim, aligned away from the chart so it never overlaps it."""
    x, y = math.cos(angle), math.sin(angle)
    ha = "center" if abs(x) < 0.7 else ("left" if x > 0 else "right")
    va = "bottom" if y > 0.7 else ("top" if y < -0.5 else "center")
    ax.text(angle, 1.14, text, ha=ha, va=va, fontsize=10, fontweight="bold", color=color,
            linespacing=1.3, multialignment="center")


def _value_text(profile: RunProfile, key: str, point: Point) -> str:
    m = profile.measurements[key]
    count = fold_count(m, profile.folds)
    text = fmt(m.value) + (f"\n({count})" if count else "")
    if m.collapsed:
        return text + "\nprobe collapsed"
    return text + ("\n(off scale)" if point.off_scale else "")


def _plot_profile(ax, profile: RunProfile, ranges: dict, color, annotate: bool, linestyle: str = "-") -> None:
    drawn = [(stage, angle, place(stage, profile.value(stage.key), ranges[stage.key]))
             for stage, angle in _axes(ranges) if profile.value(stage.key) is not None]
    # a collapsed probe measures nothing: it gets a mark, not a corner of the polygon (it would read as privacy)
    corners = [(a, p.radius) for s, a, p in drawn if not profile.measurements[s.key].collapsed]
    if corners:
        thetas, radii = zip(*(corners + corners[:1]))
        ax.plot(thetas, radii, color=color, linewidth=2, linestyle=linestyle, label=legend_label(profile, ranges),
                zorder=4)
        ax.fill(thetas, radii, color=color, alpha=0.15, zorder=3)
    for stage, angle, point in drawn:
        if profile.measurements[stage.key].collapsed:
            ax.plot([angle], [point.radius], marker="X", markersize=13, mfc="white", mec=color, mew=2, zorder=6,
                    clip_on=False)
        elif point.off_scale:
            ax.plot([angle], [point.radius], marker="D", markersize=8, mfc="white", mec=color, mew=2, zorder=6,
                    clip_on=False)
        else:
            ax.plot([angle], [point.radius], marker="o", markersize=6, color=color, zorder=6, clip_on=False)
        if annotate:
            dx, dy, ha, va = _side(angle, ccw=False)
            ax.annotate(_value_text(profile, stage.key, point), (angle, point.radius), xytext=(10 * dx, 10 * dy),
                        textcoords="offset points", ha=ha, va=va, fontsize=9, fontweight="bold", color=color,
                        zorder=7, multialignment="center",
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=color, lw=0.8, alpha=0.9))


def run_facts(profile: RunProfile, axes) -> list[str]:
    """What a reader must know before believing a run's profile on these axes (stage keys): its folds (and the
    axes that rest on fewer), the axes without a result."""
    facts = []
    if profile.folds is not None:
        fewer = [f"{STAGE[k].title.lower()} {profile.measurements[k].folds}" for k in axes
                 if profile.value(k) is not None and fold_count(profile.measurements[k], profile.folds)]
        facts.append(folds_text(profile.folds) + (f" ({', '.join(fewer)})" if fewer else ""))
    if profile.missing_titles(axes):
        facts.append("n/a: " + ", ".join(profile.missing_titles(axes)))
    if profile.stale_splits:
        facts.append(STALE_SPLITS)
    return facts


def wrap_entries(entries: list[str], width: int, separators: list[str] | None = None) -> str:
    """Entries joined by " · " (or by separators[i] before entry i + 1), lines broken only between entries (never
    inside one)."""
    separators = separators or [" · "] * (len(entries) - 1)
    lines = [entries[0]]
    for entry, separator in zip(entries[1:], separators):
        if len(lines[-1]) + len(separator) + len(entry) > width:
            lines.append(entry)
        else:
            lines[-1] += separator + entry
    return "\n".join(lines)


def legend_label(profile: RunProfile, axes) -> str:
    """The run's name, broken before its parentheses where long ("WavLM", "(lr00005_..._frozen)", "(tiny, random
    init)"), then its facts."""
    name, facts = re.split(r" (?=\()", profile.name), run_facts(profile, axes)
    return wrap_entries(name + facts, LEGEND_WIDTH, [" "] * (len(name) - 1) + [" · "] * len(facts))


def _footer(ax, profiles: list[RunProfile], ranges: dict, dataset: str, y: float) -> None:
    lines = [f"{dataset}; outward = more trustworthy on every axis"]
    keys = []
    for p in profiles:
        for stage, _ in _axes(ranges):
            m = p.measurements[stage.key]
            if m.collapsed:
                keys.append("✕ hollow, off the polygon: the privacy probe predicted one class only "
                            "(its UAR is no measure of leakage)")
            elif m.value is not None and place(stage, m.value, ranges[stage.key]).off_scale:
                keys.append("◇ hollow: value outside the axis range, drawn at the end it passed")
    lines += sorted(set(keys))
    ax.text(0.5, y, "\n".join(lines), transform=ax.transAxes, ha="center", va="top", fontsize=8.5, color="0.35")


def draw_single(profile: RunProfile, ranges: dict, color, dataset: str, path: Path) -> None:
    """The run's radar, its privacy axis the probe read for it (profile.variant)."""
    fig, ax = _new_radar({k: (None if profile.value(k) is None else r) for k, r in ranges.items()}, profile.variant)
    _plot_profile(ax, profile, ranges, color, annotate=True)
    facts = run_facts(profile, ranges)
    title = "\n".join([profile.name] + ([" · ".join(facts)] if facts else []))
    ax.set_title(title, fontsize=16 if len(profile.name) <= 28 else 12, fontweight="bold", color=color, pad=80)
    _footer(ax, [profile], ranges, dataset, y=-0.13)
    save_png(fig, path)


def draw_overlay(profiles: list[RunProfile], ranges: dict, variant: Variant, dataset: str, path: Path) -> None:
    fig, ax = _new_radar(ranges, shown_variant(profiles, variant))
    for i, profile in enumerate(profiles):
        _plot_profile(ax, profile, ranges, COLORS[i % len(COLORS)], annotate=False,
                      linestyle=LINESTYLES[i // len(COLORS) % len(LINESTYLES)])
    ax.set_title(f"Trust profiles: {dataset}", fontsize=16, fontweight="bold", pad=72)
    ncol = min(len(profiles), 3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=ncol, frameon=False, fontsize=9.5)
    rows = math.ceil(len(profiles) / ncol) * max(legend_label(p, ranges).count("\n") + 1 for p in profiles)
    _footer(ax, profiles, ranges, dataset, y=-0.15 - 0.037 * rows)
    save_png(fig, path)
