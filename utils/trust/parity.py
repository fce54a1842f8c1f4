"""Group-fairness metrics of a classifier's test predictions, with bootstrap confidence intervals.

Groups are any labels per utterance: speaker ids (the original's paper numbers) or genders.
All three metrics are 0 for a perfectly fair classifier and at most 1; lower is fairer.

- statistical parity (holisticai `multiclass_statistical_parity`, aggregation_fun="max"):
  per group the distribution of predicted classes; per pair of groups half the L1 distance
  between the two distributions; the maximum over pairs.
- equality of opportunity (holisticai `multiclass_equality_of_opp`, aggregation_fun="max"):
  per group the confusion matrix normalised per true class, P(pred=i | true=j, group); per pair
  of groups sum |M_g - M_h| / (2 * n_classes); the maximum over pairs. As in holisticai, a true
  class absent from a group counts as a uniform column (its 1e-32 smoothing does exactly that).
- demographic parity (the original's own formula, written there for male vs female only):
  per group and class, P(pred=c and true=c | group); the largest absolute difference over
  classes and pairs of groups. For two groups this is the original's number.

The class list is always the classes observed in y_true and y_pred (y_pred alone for statistical
parity, where unobserved classes add nothing): holisticai accepts no other list, and the original
passed classes=None.
"""
from typing import Sequence

import numpy as np

from utils.runs.stages import FAIRNESS_METRICS


def _encode(values: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """values -> indices into the sorted vocabulary (which holds every value)."""
    return np.searchsorted(vocabulary, values).astype(np.int64)


def _count(group_idx: np.ndarray, *index_and_size: tuple[np.ndarray, int]) -> np.ndarray:
    """Counts of (group, index...) combinations, only for groups that occur: [present groups, sizes...]."""
    flat, shape = group_idx, [int(group_idx.max()) + 1]
    for idx, size in index_and_size:
        flat, shape = flat * size + idx, shape + [size]
    counts = np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(float)
    return counts[np.bincount(group_idx, minlength=shape[0]) > 0]


def _max_pairwise(per_group: np.ndarray, reduce) -> float:
    """Largest reduce(|row_a - row_b|) over pairs of groups (0 for one group)."""
    diff = np.abs(per_group[:, None] - per_group[None, :])
    return float(reduce(diff.reshape(len(per_group), len(per_group), -1)).max())


def _statistical_parity(pred: np.ndarray, group: np.ndarray, n_classes: int) -> float:
    counts = _count(group, (pred, n_classes))
    rates = counts / counts.sum(axis=1, keepdims=True)
    return _max_pairwise(rates, lambda d: d.sum(-1) / 2)


def _equality_of_opp(true: np.ndarray, pred: np.ndarray, group: np.ndarray, n_classes: int) -> float:
    counts = _count(group, (pred, n_classes), (true, n_classes))      # [group, pred, true]
    seen = (counts.sum(axis=(0, 1)) + counts.sum(axis=(0, 2))) > 0    # holisticai's class list
    counts = counts[:, seen][:, :, seen]
    n_seen = int(seen.sum())
    per_true = counts.sum(axis=1, keepdims=True)
    rates = np.where(per_true > 0, counts / np.maximum(per_true, 1), 1.0 / n_seen)
    return _max_pairwise(rates, lambda d: d.sum(-1) / (2 * n_seen))


def _demographic_parity(true: np.ndarray, pred: np.ndarray, group: np.ndarray, n_classes: int) -> float:
    correct = (pred == true).astype(float)
    sizes = np.bincount(group)
    hits = np.bincount(group * n_classes + true, weights=correct, minlength=len(sizes) * n_classes)
    rates = (hits.reshape(len(sizes), n_classes) / np.maximum(sizes, 1)[:, None])[sizes > 0]
    return _max_pairwise(rates, lambda d: d.max(-1))


def _encode_all(y_true: Sequence[int], y_pred: Sequence[int],
                groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Labels -> indices into the sorted observed classes; groups -> indices into sorted group names."""
    y_true, y_pred, groups = np.asarray(y_true), np.asarray(y_pred), np.asarray(groups)
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError(f"lengths differ: y_true {len(y_true)}, y_pred {len(y_pred)}, groups {len(groups)}")
    classes = np.unique(np.concatenate([y_pred, y_true]))
    return (_encode(y_true, classes), _encode(y_pred, classes), _encode(groups, np.unique(groups)),
            len(classes))


def multiclass_statistical_parity(y_pred: Sequence[int], groups: Sequence[str]) -> float:
    _, pred, group, n_classes = _encode_all(y_pred, y_pred, groups)
    return _statistical_parity(pred, group, n_classes)


def multiclass_equality_of_opp(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str]) -> float:
    return _equality_of_opp(*_encode_all(y_true, y_pred, groups))


def demographic_parity(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str]) -> float:
    return _demographic_parity(*_encode_all(y_true, y_pred, groups))


def _all_metrics(true: np.ndarray, pred: np.ndarray, group: np.ndarray, n_classes: int) -> dict[str, float]:
    values = (_statistical_parity(pred, group, n_classes), _equality_of_opp(true, pred, group, n_classes),
              _demographic_parity(true, pred, group, n_classes))
    return dict(zip(FAIRNESS_METRICS, values))


def _not_available(reason: str, n_utterances: int) -> dict:
    return {**{m: None for m in FAIRNESS_METRICS}, "ci95": {m: None for m in FAIRNESS_METRICS},
            "n_utterances": n_utterances, "n_groups": 0, "smallest_group": 0,
            "n_bootstrap": 0, "reason": reason}


def _bootstrap_ci(true: np.ndarray, pred: np.ndarray, group: np.ndarray, n_classes: int,
                  n_bootstrap: int, seed: int) -> tuple[dict, int]:
    """Percentile 95% intervals over utterance resamples; resamples left with one group are skipped."""
    rng = np.random.default_rng(seed)
    samples = {m: [] for m in FAIRNESS_METRICS}
    for _ in range(n_bootstrap):
        pick = rng.integers(0, len(true), len(true))
        if len(np.unique(group[pick])) < 2:
            continue
        for name, value in _all_metrics(true[pick], pred[pick], group[pick], n_classes).items():
            samples[name].append(value)
    ci = {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else None
          for m, v in samples.items()}
    return ci, len(samples[FAIRNESS_METRICS[0]])


def fairness_report(y_true: Sequence[int], y_pred: Sequence[int], groups: Sequence[str],
                    n_bootstrap: int, seed: int) -> dict:
    """The three metrics, their bootstrap 95% CIs, and how many utterances/groups they rest on.

    Utterances whose group is "" (unknown, e.g. MELD gender) are left out. With fewer than two
    known groups the metrics are None and "reason" says why; otherwise "reason" is None.
    Small groups count like any other (as in holisticai); "smallest_group" shows when one is tiny.
    A maximum over group pairs grows with sampling noise, so resamples are biased upward: when
    groups are alike the percentile interval can lie entirely above the point value.
    Schema: {statistical_parity, equality_of_opportunity, demographic_parity: float|None,
    ci95: {metric: [low, high]|None}, n_utterances, n_groups, smallest_group, n_bootstrap, reason}.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    groups = np.asarray([str(g) for g in groups])
    if not len(y_true) == len(y_pred) == len(groups):
        raise ValueError(f"lengths differ: y_true {len(y_true)}, y_pred {len(y_pred)}, groups {len(groups)}")
    known = groups != ""
    y_true, y_pred, groups = y_true[known], y_pred[known], groups[known]
    names, sizes = np.unique(groups, return_counts=True)
    if len(names) < 2:
        reason = "no group labels" if len(names) == 0 else f"only one group ('{names[0]}')"
        return _not_available(reason, int(known.sum()))
    true, pred, group, n_classes = _encode_all(y_true, y_pred, groups)
    report = _all_metrics(true, pred, group, n_classes)
    report["ci95"], used = _bootstrap_ci(true, pred, group, n_classes, n_bootstrap, seed)
    report.update(n_utterances=int(len(y_true)), n_groups=int(len(names)), smallest_group=int(sizes.min()),
                  n_bootstrap=used, reason=None)
    return report
