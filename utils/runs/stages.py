"""The trust stages, described once: where each evaluation writes its result, which number in it is the
profile's value, and how to read that number (axis title, unit, which direction is better).

The evaluation scripts write into the folders utils.runs.paths names; the trust profile and the report read
them through this table.
"""
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils.core.io import read_json
from utils.runs.paths import RunId, attack_dir, fairness_dir, finetune_dir, flops_dir, privacy_dir, robustness_dir
from utils.runs.identity import RunConfig

RESULTS_FILE = "results.json"       # utils.training.pipeline.aggregate's output in every averaged stage
FLOPS_FILE = "gflops.json"


@dataclass(frozen=True)
class Variant:
    """Which result of each evaluation the profile reads (the evaluations can be run several ways)."""
    attack_method: str = "fgsm"
    snr: float = 45
    privacy_attack: str = "gender"
    privacy_probe: str = "original"         # or "linear": the linear probe in the same results.json
    fairness_group: str = "speaker"
    fairness_metric: str = "statistical_parity"


@dataclass(frozen=True)
class TrustStage:
    key: str                    # axis / --ranges name
    title: str                  # axis title
    higher_is_better: bool
    unit: str
    scale: float                # stored number x scale = the value in `unit`
    averaged: bool              # the value sits under "average" (spread under "std"); else at the top level
    result_dir: Callable[[str | Path, RunConfig | RunId, Variant], Path]
    file_name: str
    value_keys: Callable[[Variant], list[str]]
    describe: Callable[[Variant], str]      # what exactly the axis measures

    def result_path(self, project_dir: str | Path, run: RunConfig | RunId, variant: Variant = Variant()) -> Path:
        return self.result_dir(project_dir, run, variant) / self.file_name

    def natural_range(self, num_classes: int) -> tuple[float, float]:
        """The metric's own scale; an upper end of inf means "0 to the largest value, rounded up"."""
        return {"uar": (100.0 / num_classes, 100.0), "privacy": (50.0, 100.0),
                "safety": (0.0, 100.0)}.get(self.key, (0.0, math.inf))


def _privacy_keys(v: Variant) -> list[str]:
    return ["linear_probe", "uar"] if v.privacy_probe == "linear" else ["uar"]


STAGES: list[TrustStage] = [
    TrustStage("uar", "System Performance", True, "%", 1.0, True,
               lambda p, r, v: finetune_dir(p, r), RESULTS_FILE, lambda v: ["uar"],
               lambda v: "emotion UAR (%)"),
    TrustStage("fairness", "Fairness", False, "%", 100.0, True,
               lambda p, r, v: fairness_dir(p, r), RESULTS_FILE, lambda v: [v.fairness_group, v.fairness_metric],
               lambda v: f"{v.fairness_group} {v.fairness_metric.replace('_', ' ')} (%)"),
    TrustStage("privacy", "Privacy", False, "%", 1.0, True,
               lambda p, r, v: privacy_dir(p, r, v.privacy_attack), RESULTS_FILE, _privacy_keys,
               lambda v: f"{v.privacy_attack} inference UAR (%)" + (", linear probe" if v.privacy_probe == "linear"
                                                                     else "")),
    TrustStage("safety", "Safety", False, "%", 1.0, True,
               lambda p, r, v: attack_dir(p, r, v.attack_method, v.snr), RESULTS_FILE, lambda v: ["success_rate"],
               lambda v: f"{v.attack_method.upper()} success at {v.snr:g} dB (%)"),
    TrustStage("gflops", "Sustainability", False, "GFLOPs", 1.0, False,
               lambda p, r, v: flops_dir(p, r), FLOPS_FILE, lambda v: ["gflops"],
               lambda v: "GFLOPs per utterance"),
    TrustStage("robustness", "Robustness", False, "points", 1.0, True,
               lambda p, r, v: robustness_dir(p, r), RESULTS_FILE, lambda v: ["mean_uar_drop"],
               lambda v: "UAR drop under perturbation (points)"),
    TrustStage("calibration", "Calibration", False, "%", 100.0, True,
               lambda p, r, v: finetune_dir(p, r), RESULTS_FILE, lambda v: ["ece"],
               lambda v: "expected calibration error (%)"),
]
STAGE = {s.key: s for s in STAGES}


@dataclass
class Measurement:
    """One stage's value for one run, with what a reader must know to believe it."""
    value: float | None = None
    std: float | None = None
    folds: int | None = None            # how many folds the value averages (None: not a per-fold result)
    collapsed: bool = False             # privacy: the probe predicted one class only
    note: str | None = None             # why the value is missing


def number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def dig(obj, keys: list[str]):
    """obj[k1][k2]..., or the flat dotted key "k1.k2" (either spelling of a nested result); None if absent."""
    for i, key in enumerate(keys):
        if not isinstance(obj, dict):
            return None
        if key not in obj:
            return obj.get(".".join(keys[i:]))
        obj = obj[key]
    return obj


def measure(stage: TrustStage, project_dir: str | Path, run: RunId, variant: Variant = Variant()) -> Measurement:
    path = stage.result_path(project_dir, run, variant)
    if not path.is_file():
        return Measurement(note=f"missing {path}")
    data = read_json(path)
    keys = (["average"] if stage.averaged else []) + stage.value_keys(variant)
    value = number(dig(data, keys))
    if value is None:
        return Measurement(note=f"{path} has no number at {'.'.join(keys)}")
    std = number(dig(data, ["std"] + stage.value_keys(variant))) if stage.averaged else None
    folds = dig(data, ["meta", "folds_done"]) if stage.averaged else None
    return Measurement(stage.scale * value, None if std is None else stage.scale * std,
                       len(folds) if isinstance(folds, list) else None,
                       stage.key == "privacy" and variant.privacy_probe == "original" and privacy_collapsed(data))


def privacy_collapsed(results: dict) -> bool:
    """The gender probe predicted a single class on the test set, in any fold (flagged by the privacy stage)."""
    return any(isinstance(entry, dict) and entry.get("collapsed") is True for entry in results.values())


def is_random_init(project_dir: str | Path, run: RunId) -> bool:
    """The run's backbone had random weights: its results.json says so, or its folder name does."""
    path = STAGE["uar"].result_path(project_dir, run)
    flags = dig(read_json(path), ["meta", "flags"]) if path.is_file() else None
    return "_randinit" in run.name or (isinstance(flags, dict) and flags.get("random_init") is True)
