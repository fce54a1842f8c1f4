"""Classification metrics in percent: UAR (macro recall), ACC, macro-F1."""
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score


def classification_scores(y_true, y_pred, num_classes: int) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {"uar": float("nan"), "acc": float("nan"), "macro_f1": float("nan")}
    labels = [c for c in range(num_classes) if (y_true == c).any()]
    return {
        "uar": 100.0 * recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
        "acc": 100.0 * accuracy_score(y_true, y_pred),
        "macro_f1": 100.0 * f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0),
    }


def mean_std(per_fold: dict, keys: list[str]) -> tuple[dict, dict]:
    """Average and (population, as the original's np.std) std over folds of each key.

    A dotted key ("gender.statistical_parity") reads and writes nested dicts.
    """
    avg, std = {}, {}
    for key in keys:
        vals = [v for v in (_dotted(fold, key) for fold in per_fold.values()) if v is not None]
        _set_dotted(avg, key, float(np.mean(vals)) if vals else None)
        _set_dotted(std, key, float(np.std(vals)) if vals else None)
    return avg, std


def _dotted(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _set_dotted(d: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value
