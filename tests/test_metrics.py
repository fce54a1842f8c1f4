"""UAR/ACC/macro-F1 agree with scikit-learn, including classes absent from the labels or the predictions."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from utils.training.metrics import classification_scores, folds_with_values, mean_std


@pytest.mark.parametrize("seed", range(20))
def test_scores_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 8))
    y_true = rng.integers(0, n_classes - (seed % 2), size=int(rng.integers(1, 60)))   # odd seeds: a class absent
    y_pred = np.where(rng.random(len(y_true)) < 0.5, y_true, rng.integers(0, n_classes, size=len(y_true)))
    labels = sorted(set(y_true.tolist()))
    got = classification_scores(y_true, y_pred, n_classes)
    assert got["uar"] == pytest.approx(100 * recall_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    assert got["acc"] == pytest.approx(100 * accuracy_score(y_true, y_pred))
    assert got["macro_f1"] == pytest.approx(100 * f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def test_hand_computed_case():
    got = classification_scores([0, 0, 1, 1], [0, 1, 1, 1], 3)
    assert got["uar"] == pytest.approx(75.0) and got["acc"] == pytest.approx(75.0)
    assert got["macro_f1"] == pytest.approx(100 * (2 / 3 + 0.8) / 2)


def test_mean_std_reads_dotted_keys_and_skips_missing_values():
    folds = {"1": {"uar": 50.0, "gender": {"sp": 0.1}}, "2": {"uar": 70.0, "gender": {"sp": None}}}
    avg, std = mean_std(folds, ["uar", "gender.sp"])
    assert avg == {"uar": 60.0, "gender": {"sp": 0.1}} and std["uar"] == pytest.approx(10.0)
    assert folds_with_values(folds, ["uar", "gender.sp"]) == {"uar": [1, 2], "gender": {"sp": [1]}}
