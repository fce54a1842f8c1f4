"""The trust stages, described once: where each evaluation writes its result, which keys it writes, which of
them is the profile's value, and how to read that number (axis title, CSV column, unit, natural range, which
direction is better).

The stage scripts write through this table (utils.training.pipeline.run_stage), the trust profile, radar charts
and report read through it: a new axis is one more entry here.
"""
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from utils.core.io import read_json
from utils.runs.paths import (RunFolder, RunId, attack_dir, attacks_run, fairness_dir, finetune_dir, flops_dir,
                              privacy_dir, robustness_dir)
from utils.runs.identity import RunConfig

CLASSIFICATION_KEYS = ("uar", "acc", "macro_f1")     # an emotion (or gender probe) head's test scores
FAIRNESS_GROUPS = ("speaker", "gender")
# the group each protocol's fairness axis reads (utils/training/protocol.py Protocol.fairness_group): the original's
# latest code passed gender to its parity metrics
PROTOCOL_FAIRNESS_GROUP = {"fixed": "speaker", "original": "gender"}
FAIRNESS_METRICS = ("statistical_parity", "equality_of_opportunity", "demographic_parity")
ATTACK_METHODS = ("fgsm", "pgd", "gaussian_noise")
PRIVACY_ATTACKS = ("gender",)
PRIVACY_PROBES = ("auto", "linear", "original")   # auto: linear for --protocol fixed runs, original for original
LINEAR_PROBE_UAR = "linear_probe.uar"


@dataclass(frozen=True)
class Variant:
    """Which result of each evaluation the profile reads (the evaluations can be run several ways)."""
    attack_method: str = "fgsm"
    snr: float = 45
    privacy_attack: str = "gender"
    privacy_probe: str = "auto"     # "linear" (the linear probe in the same results.json), "original", or "auto":
                                    # linear for --protocol fixed runs, original for --protocol original runs
    fairness_group: str | None = None       # None: each run's protocol's (PROTOCOL_FAIRNESS_GROUP)
    fairness_metric: str = "statistical_parity"


@dataclass(frozen=True)
class TrustStage:
    """One trust stage: what its script writes and where, and how the profile reads it back.

    A per-fold stage writes each fold's result into its run folder (utils.runs.paths.RunFolder: under "best" where
    the stage trains heads) and results.json with each result key averaged over folds ("average", "std"); a
    per-run stage writes one `file_name` with the result keys at the top level. Dotted keys
    ("speaker.statistical_parity") are nested dicts."""
    key: str                    # axis / --ranges name
    title: str                  # axis title
    column: str                 # trust_profile.csv column (its spread: column + "_std")
    higher_is_better: bool
    unit: str
    scale: float                # stored number x scale = the value in `unit`
    result_dir: Callable[[str | Path, RunConfig | RunId, Variant], Path]
    result_keys: tuple[str, ...]            # what the stage writes (averaged over folds when per_fold)
    value_key: Callable[[Variant], str]     # which result key is the axis' value
    describe: Callable[[Variant], str]      # what exactly the axis measures
    natural_low: float | None = 0.0         # the metric's own scale; None: chance level (100 / classes)
    natural_high: float = math.inf          # inf: 0 to the largest value, rounded up
    bound: float = math.inf                 # the largest value the metric can take (fairness metrics: 1, i.e. 100 %)
    per_fold: bool = True
    trains: bool = False                    # its folder trains heads (RunFolder.trains)
    default_axis: bool = True               # on the radar without --axes
    file_name: str | None = None            # a per-run stage's one file

    def folder(self, project_dir: str | Path, run: RunConfig | RunId, variant: Variant = Variant()) -> RunFolder:
        return RunFolder(self.result_dir(project_dir, run, variant), trains=self.trains)

    def result_path(self, project_dir: str | Path, run: RunConfig | RunId, variant: Variant = Variant()) -> Path:
        folder = self.folder(project_dir, run, variant)
        return folder.results if self.per_fold else folder.path / self.file_name

    def natural_range(self, num_classes: int) -> tuple[float, float]:
        """The metric's own scale; an upper end of inf means "0 to the largest value, rounded up"."""
        return 100.0 / num_classes if self.natural_low is None else self.natural_low, self.natural_high

    @staticmethod
    def holds(result: dict | None, keys: Sequence[str]) -> bool:
        """Whether a fold's result has every key (a key's value may be None: a result that could not be computed)."""
        return isinstance(result, dict) and all(has_key(result, k) for k in keys)


PROBE_NAMES = {"linear": ", linear probe", "original": ", original's probe",
               "auto": "\nlinear probe (--protocol original\nruns: the original's probe)"}


def _privacy_describe(v: Variant) -> str:
    return f"{v.privacy_attack} inference UAR (%)" + PROBE_NAMES[v.privacy_probe]


STAGES: list[TrustStage] = [
    TrustStage("uar", "System Performance", "uar_pct", True, "%", 1.0, lambda p, r, v: finetune_dir(p, r),
               CLASSIFICATION_KEYS, lambda v: "uar", lambda v: "emotion UAR (%)",
               natural_low=None, natural_high=100.0, trains=True),
    TrustStage("fairness", "Fairness", "fairness_pct", False, "%", 100.0, lambda p, r, v: fairness_dir(p, r),
               tuple(f"{g}.{m}" for g in FAIRNESS_GROUPS for m in FAIRNESS_METRICS) + ("uar",),
               lambda v: f"{v.fairness_group}.{v.fairness_metric}",
               lambda v: f"{v.fairness_group or 'speaker (original: gender)'} "
                         f"{v.fairness_metric.replace('_', ' ')} (%)", bound=100.0),
    TrustStage("privacy", "Privacy", "privacy_gender_uar_pct", False, "%", 1.0,
               lambda p, r, v: privacy_dir(p, r, v.privacy_attack), CLASSIFICATION_KEYS + (LINEAR_PROBE_UAR,),
               lambda v: LINEAR_PROBE_UAR if v.privacy_probe == "linear" else "uar", _privacy_describe,
               natural_low=50.0, natural_high=100.0, trains=True),
    TrustStage("safety", "Safety", "safety_success_pct", False, "%", 1.0,
               lambda p, r, v: attack_dir(p, r, v.attack_method, v.snr),
               ("success_rate", "measured_snr_db", "clean_uar"), lambda v: "success_rate",
               lambda v: f"{v.attack_method.upper()} success at {v.snr:g} dB (%)", natural_high=100.0),
    TrustStage("gflops", "Sustainability", "gflops", False, "GFLOPs", 1.0, lambda p, r, v: flops_dir(p, r),
               ("gflops",), lambda v: "gflops",
               lambda v: "GFLOPs per utterance", per_fold=False, file_name="gflops.json"),
    TrustStage("robustness", "Robustness", "robustness_uar_drop_pts", False, "points", 1.0,
               lambda p, r, v: robustness_dir(p, r), ("clean.uar", "mean_uar_drop"), lambda v: "mean_uar_drop",
               lambda v: "UAR drop under perturbation (points)", default_axis=False),
    # written by the finetune stage: its results.json averages the calibration of each fold's test probabilities
    TrustStage("calibration", "Calibration", "calibration_ece_pct", False, "%", 100.0,
               lambda p, r, v: finetune_dir(p, r), ("ece", "brier"), lambda v: "ece",
               lambda v: "expected calibration error (%)", bound=100.0, trains=True, default_axis=False),
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


def has_key(obj: dict, dotted: str) -> bool:
    """Whether the dotted key is there (its value may be None: a result that could not be computed)."""
    *parents, last = dotted.split(".")
    parent = dig(obj, parents) if parents else obj
    return isinstance(parent, dict) and last in parent


def measure(stage: TrustStage, project_dir: str | Path, run: RunId, variant: Variant = Variant(),
            flags: dict | None = None) -> Measurement:
    """The stage's value for the run, read as its protocol reads it (for_run); `flags`: recorded_flags, if read."""
    variant = for_run(variant, run, recorded_flags(project_dir, run) if flags is None else flags)
    path = stage.result_path(project_dir, run, variant)
    if not path.is_file():
        others = other_attacks_text(project_dir, run) if stage.key == "safety" else ""
        return Measurement(note=f"missing {path}{others}")
    data = read_json(path)
    key = stage.value_key(variant).split(".")
    where = (["average"] if stage.per_fold else []) + key
    value = number(dig(data, where))
    if value is None:
        return Measurement(note=f"{path} has no number at {'.'.join(where)}{reasons_text(data, key)}")
    if not stage.per_fold:
        return Measurement(stage.scale * value)
    std, folds = number(dig(data, ["std"] + key)), value_folds(data, key)
    return Measurement(stage.scale * value, None if std is None else stage.scale * std,
                       len(folds) if isinstance(folds, list) else None,
                       stage.key == "privacy" and variant.privacy_probe == "original" and privacy_collapsed(data))


def other_attacks_text(project_dir: str | Path, run: RunId) -> str:
    """The attacks the run has results for, with the flags that show one ("" for none)."""
    attacks = [f"{method} at {snr:g} dB (--attack_method {method} --snr {snr:g})"
               for method, snr in attacks_run(project_dir, run)]
    return f"; it has safety results for {', '.join(attacks)}" if attacks else ""


def reasons_text(results: dict, keys: list[str]) -> str:
    """Why the folds have no value at keys, where they say it beside the value ("reason"): " (fold 1: only one
    group ('20'))", or ""."""
    reasons = [f"fold {fold}: {why}" for fold in dig(results, ["meta", "folds_done"]) or []
               if (why := dig(results, [str(fold), *keys[:-1], "reason"]))]
    return f" ({'; '.join(reasons)})" if reasons else ""


def value_folds(results: dict, keys: list[str]) -> list | None:
    """The folds a value of results.json averages: those that have it (meta.value_folds), else every fold done."""
    folds = dig(results, ["meta", "value_folds"] + keys)
    return folds if isinstance(folds, list) else dig(results, ["meta", "folds_done"])


def privacy_collapsed(results: dict) -> bool:
    """The gender probe predicted a single class on the test set, in any fold (flagged by the privacy stage)."""
    return any(isinstance(entry, dict) and entry.get("collapsed") is True for entry in results.values())


def recorded_flags(project_dir: str | Path, run: RunId) -> dict:
    """The flags the run's finetune results.json records ({} without one)."""
    path = STAGE["uar"].result_path(project_dir, run)
    flags = dig(read_json(path), ["meta", "flags"]) if path.is_file() else None
    return flags if isinstance(flags, dict) else {}


def for_run(variant: Variant, run: RunId, flags: dict) -> Variant:
    """The variant as one run is read, by the run's protocol (its recorded flags, else its folder name):
    without a chosen fairness group, the protocol's; privacy "auto": the original's probe for --protocol original
    runs, the linear probe otherwise."""
    protocol = flags.get("protocol") or ("original" if "_origproto" in run.name else "fixed")
    probe = variant.privacy_probe if variant.privacy_probe != "auto" else \
        ("original" if protocol == "original" else "linear")
    return replace(variant, fairness_group=variant.fairness_group or PROTOCOL_FAIRNESS_GROUP.get(protocol, "speaker"),
                   privacy_probe=probe)


def backbone_build(run: RunId, flags: dict) -> list[str]:
    """How the run's backbone differs from the published one ("tiny", "random init"): its flags say so, or its
    folder name does."""
    return [name for name, flag, suffix in (("tiny", "tiny", "_tiny"), ("random init", "random_init", "_randinit"))
            if suffix in run.name or flags.get(flag) is True]
