"""Classification metrics in percent: UAR (macro recall), ACC, macro-F1."""
import numpy as np

from utils.runs.stages import dig


def classification_scores(y_true, y_pred, num_classes: int, uar_classes: str = "labels") -> dict:
    """Macro averages over the classes present in y_true (sklearn's recall/F1 with labels=those, zero_division=0);
    uar_classes="labels_or_predictions": over those in y_true or y_pred, as sklearn's recall_score(average="macro")
    and the original (--protocol original): a predicted class absent from the labels counts with recall 0."""
    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if len(y_true) == 0:
        return {"uar": float("nan"), "acc": float("nan"), "macro_f1": float("nan")}
    confusion = np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    present = confusion.sum(axis=1) > 0
    if uar_classes == "labels_or_predictions":
        present |= confusion.sum(axis=0) > 0
    hits = np.diag(confusion)[present]
    true_counts = confusion.sum(axis=1)[present]
    recall = np.divide(hits, true_counts, out=np.zeros(len(hits)), where=true_counts > 0)
    predicted = confusion.sum(axis=0)[present]
    precision = np.divide(hits, predicted, out=np.zeros(len(hits)), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(hits)), where=precision + recall > 0)
    return {"uar": 100.0 * float(recall.mean()), "acc": 100.0 * float(hits.sum() / len(y_true)),
            "macro_f1": 100.0 * float(f1.mean())}


def mean_std(per_fold: dict, keys: list[str]) -> tuple[dict, dict]:
    """Average and (population, as the original's np.std) std over folds of each key.

    A dotted key ("gender.statistical_parity") reads and writes nested dicts.
    """
    avg, std = {}, {}
    for key in keys:
        vals = [v for v in (dig(fold, key.split(".")) for fold in per_fold.values()) if v is not None]
        _set_dotted(avg, key, float(np.mean(vals)) if vals else None)
        _set_dotted(std, key, float(np.std(vals)) if vals else None)
    return avg, std


def folds_with_values(per_fold: dict, keys: list[str]) -> dict:
    """Per key (nested as in mean_std), the folds that have a value for it: what each average rests on."""
    folds = {}
    for key in keys:
        has_value = [int(f) for f, fold in per_fold.items() if dig(fold, key.split(".")) is not None]
        _set_dotted(folds, key, sorted(has_value))
    return folds


def _set_dotted(d: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for part in parents:
        d = d.setdefault(part, {})
    d[last] = value
