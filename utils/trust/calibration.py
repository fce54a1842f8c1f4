"""Calibration of a run's test class probabilities (the finetune stage's fold_k_test_predictions.csv): expected
calibration error, Brier score and the reliability diagram's bins, per fold and pooled over the folds' test sets.

- ECE: the utterances binned by confidence (the largest class probability) into ECE_BINS equal-width bins of
  [0, 1] (bin b holds (b/15, (b+1)/15], the first also 0); sum over bins of (share of utterances in the bin) x
  |accuracy - mean confidence| in the bin. 0 = calibrated, at most 1.
- Brier score (multi-class): mean over utterances of the sum over classes of (probability - one-hot label)^2;
  0 = certain and right, 2 = certain and wrong.
"""
from pathlib import Path

import numpy as np

from utils.core.errors import TrustSerError
from utils.runs.paths import RunFolder
from utils.runs.predictions import read_predictions

ECE_BINS = 15


def confidence_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: count, mean confidence and accuracy (NaN where empty)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int)
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": np.linspace(0, 1, bins + 1), "count": count,
                "confidence": np.bincount(index, confidence, bins) / count,
                "accuracy": np.bincount(index, correct, bins) / count}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    b = confidence_bins(probs, labels, bins)
    used = b["count"] > 0
    return float(np.sum(b["count"][used] / b["count"].sum() * np.abs(b["accuracy"][used] - b["confidence"][used])))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    probs = np.asarray(probs, dtype=float)
    onehot = np.eye(probs.shape[1])[np.asarray(labels, dtype=int)]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def read_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [N, classes], labels [N]) from a predictions CSV."""
    rows = read_predictions(path)       # labels are checked against the prob_<class> columns there
    if not rows:
        raise TrustSerError(f"{path}: a predictions file without rows")
    return np.array([r["probs"] for r in rows], dtype=float), np.array([r["label"] for r in rows], dtype=int)


def calibration_scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {"ece": expected_calibration_error(probs, labels), "brier": brier_score(probs, labels),
            "num_utterances": len(labels)}


def pooled_predictions(run: RunFolder, folds: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Every listed fold's test predictions in one set (each utterance is tested in one fold); None if none."""
    found = [read_probabilities(run.predictions(f)) for f in folds if run.predictions(f).is_file()]
    if not found:
        return None
    return np.concatenate([p for p, _ in found]), np.concatenate([y for _, y in found])


def add_calibration(run: RunFolder):
    """For utils.training.pipeline.aggregate: each finished fold gets its ece and brier (from its predictions
    CSV), and results.json a "calibration" entry with the pooled values and how they were computed."""
    def summary(per_fold: dict) -> dict:
        for fold, result in per_fold.items():
            path = run.predictions(int(fold))
            if path.is_file():
                result.update({k: v for k, v in calibration_scores(*read_probabilities(path)).items()
                               if k != "num_utterances"})
        pooled = pooled_predictions(run, [int(f) for f in per_fold])
        return {"calibration": {"pooled": None if pooled is None else calibration_scores(*pooled),
                                "ece_bins": ECE_BINS, "confidence": "largest class probability",
                                "brier": "multi-class: sum over classes, mean over utterances"}}
    return summary
