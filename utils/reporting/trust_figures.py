"""Figures of the newer trust axes: the reliability diagram of a run's test probabilities and its UAR under
perturbation (UAR vs SNR per noise type; the other perturbations beside it)."""
from pathlib import Path

import numpy as np

from utils.reporting.figures import plt, save_png
from utils.reporting.radar import COLORS
from utils.runs.stages import dig, number
from utils.trust.calibration import calibration_scores, confidence_bins
from utils.trust.perturbations import ADDITIVE, perturbation_of

NOISE_LABELS = {"white": "white noise", "pink": "pink noise", "noise": "real noise (--noise_dir)",
                "babble": "babble"}


def draw_reliability(probs: np.ndarray, labels: np.ndarray, title: str, path: Path) -> None:
    """Accuracy per equal-width confidence bin against the diagonal, with the bins' utterance counts below."""
    bins, scores = confidence_bins(probs, labels), calibration_scores(probs, labels)
    edges, used = bins["edges"], bins["count"] > 0
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.8, 5.6), sharex=True, height_ratios=(3, 1))
    top.bar(centres[used], bins["accuracy"][used], width=width, color="tab:blue", edgecolor="white",
            label="accuracy in bin")
    top.plot(bins["confidence"][used], bins["accuracy"][used], "o", color="tab:orange", markersize=4,
             label="(mean confidence, accuracy)", clip_on=False)
    top.plot([0, 1], [0, 1], "--", color="0.3", linewidth=1, label="calibrated")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    top.set_title(f"{title}\nECE {100 * scores['ece']:.1f}%, Brier {scores['brier']:.3f}, "
                  f"{scores['num_utterances']} utterances", fontsize=9.5, pad=24)
    # above the axes: any corner inside may hold a full bin
    top.legend(fontsize=7.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False,
               handlelength=1.5, columnspacing=1.0)
    top.grid(alpha=0.3)
    bottom.bar(centres, bins["count"], width=width, color="0.55", edgecolor="white")
    bottom.set(xlabel="confidence (largest class probability)", ylabel="utterances")
    fig.tight_layout()
    save_png(fig, path)


def draw_robustness(results: dict, title: str, path: Path) -> bool:
    """Left: UAR (mean ± std over folds) against SNR per noise type, the clean UAR dashed; right: UAR under the
    other perturbations. False (nothing drawn) when results.json holds no perturbation."""
    names = dig(results, ["meta", "robustness", "perturbations"]) or []
    uar = {n: (number(dig(results, ["average", "perturbations", n, "uar"])),
               number(dig(results, ["std", "perturbations", n, "uar"])) or 0.0) for n in names}
    uar = {n: v for n, v in uar.items() if v[0] is not None}
    if not uar:
        return False
    clean = number(dig(results, ["average", "clean", "uar"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), width_ratios=(3, 2), sharey=True)
    kinds = [k for k in NOISE_LABELS if any(perturbation_of(n).kind == k for n in uar)]
    for i, kind in enumerate(kinds):
        points = sorted((perturbation_of(n).value, *v) for n, v in uar.items() if perturbation_of(n).kind == kind)
        snr, mean, std = map(np.array, zip(*points))
        left.errorbar(snr, mean, yerr=std, marker="o", capsize=3, color=COLORS[i % len(COLORS)],
                      label=NOISE_LABELS[kind])
    others = [n for n in uar if perturbation_of(n).kind not in ADDITIVE]
    right.bar(range(len(others)), [uar[n][0] for n in others], yerr=[uar[n][1] for n in others],
              color="tab:gray", capsize=3)
    right.set_xticks(range(len(others)), others, rotation=30, ha="right")
    for ax in (left, right):
        if clean is not None:
            ax.axhline(clean, color="0.2", linestyle="--", linewidth=1, label=f"clean ({clean:.1f}%)")
        ax.grid(alpha=0.3)
    left.set(xlabel="SNR (dB)", ylabel="UAR (%)", title="noise at a given SNR")
    left.set_ylim(bottom=0)
    left.invert_xaxis()         # harder to the right
    left.legend(fontsize=8)
    right.set(title="other perturbations")
    right.yaxis.set_tick_params(labelleft=True)
    fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.tight_layout()
    save_png(fig, path)
    return True
