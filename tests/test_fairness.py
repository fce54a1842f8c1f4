import numpy as np
import pytest

from utils.trust.parity import (demographic_parity, fairness_report, multiclass_equality_of_opp,
                            multiclass_statistical_parity)

# holisticai's docstring example
P_ATTR = np.array(["A", "A", "A", "A", "B", "B", "B", "B", "C", "C"])
Y_PRED = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
Y_TRUE = np.array([0, 1, 1, 0, 1, 0, 2, 1, 2, 1])


def test_fair_classifier_scores_zero():
    groups = np.array(["m", "f"] * 6)
    y_true = np.repeat([0, 1, 2], 4)
    y_pred = np.repeat([0, 1, 2], 4)       # each group: same predictions, same errors
    assert multiclass_statistical_parity(y_pred, groups) == 0.0
    assert multiclass_equality_of_opp(y_true, y_pred, groups) == 0.0
    assert demographic_parity(y_true, y_pred, groups) == 0.0


def test_statistical_parity_by_hand():
    # A predicts [0,1,2,0] -> (.5,.25,.25); B (.25,.5,.25); C (.5,0,.5)
    # pairs: A-B .25, A-C .25, B-C .5 -> max .5
    assert multiclass_statistical_parity(Y_PRED, P_ATTR) == pytest.approx(0.5, abs=1e-12)


def test_equality_of_opportunity_by_hand():
    # Two groups, two classes.  Group m: true 0 -> pred 0,0 ; true 1 -> pred 1,1  => M_m = I
    # Group f: true 0 -> pred 0,1 ; true 1 -> pred 1,1  => M_f = [[.5,0],[.5,1]] (rows pred, cols true)
    # sum |M_m - M_f| = .5 + .5 = 1, divided by 2 * 2 classes -> .25
    groups = ["m"] * 4 + ["f"] * 4
    y_true = [0, 0, 1, 1, 0, 0, 1, 1]
    y_pred = [0, 0, 1, 1, 0, 1, 1, 1]
    assert multiclass_equality_of_opp(y_true, y_pred, groups) == pytest.approx(0.25, abs=1e-12)


def test_equality_of_opportunity_missing_true_class_is_uniform_column():
    # group f never has true class 1: its column is uniform (.5,.5); m's column is (0,1)
    # |M_m - M_f| = column 0: 0 ; column 1: .5 + .5 -> 1 / 4 = .25
    groups = ["m", "m", "f", "f"]
    y_true = [0, 1, 0, 0]
    y_pred = [0, 1, 0, 0]
    assert multiclass_equality_of_opp(y_true, y_pred, groups) == pytest.approx(0.25, abs=1e-12)


def test_demographic_parity_by_hand_matches_original_formula():
    # per group, P(pred == true == c | group): male (4 utt) hits class 0 twice -> .5, class 1 once -> .25
    # female (2 utt) hits class 0 never -> 0, class 1 once -> .5 ; max |diff| = .5
    groups = ["male"] * 4 + ["female"] * 2
    y_true = [0, 0, 1, 1, 0, 1]
    y_pred = [0, 0, 1, 0, 1, 1]
    assert demographic_parity(y_true, y_pred, groups) == pytest.approx(0.5, abs=1e-12)


def test_matches_holisticai_on_random_cases():
    metrics = pytest.importorskip("holisticai.bias.metrics")
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        n, n_groups, n_classes = rng.integers(2, 80), rng.integers(1, 7), rng.integers(2, 6)
        groups = np.array([f"spk{g}" for g in rng.integers(0, n_groups, n)])
        y_true, y_pred = rng.integers(0, n_classes, n), rng.integers(0, n_classes, n)
        expected_sp = metrics.multiclass_statistical_parity(groups, y_pred, aggregation_fun="max")
        expected_eo = metrics.multiclass_equality_of_opp(groups, y_pred, y_true, aggregation_fun="max")
        assert multiclass_statistical_parity(y_pred, groups) == pytest.approx(expected_sp, abs=1e-9)
        assert multiclass_equality_of_opp(y_true, y_pred, groups) == pytest.approx(expected_eo, abs=1e-9)
        checked += 1
    assert checked == 200
    assert multiclass_equality_of_opp(Y_TRUE, Y_PRED, P_ATTR) == pytest.approx(
        metrics.multiclass_equality_of_opp(P_ATTR, Y_PRED, Y_TRUE, aggregation_fun="max"), abs=1e-9)


def _speaker_data(n: int = 400, seed: int = 1):
    rng = np.random.default_rng(seed)
    groups = np.array([f"spk{g}" for g in rng.integers(0, 5, n)])
    y_true = rng.integers(0, 4, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, 4, n))
    return y_true, y_pred, groups


def test_report_point_values_and_ci():
    y_true, y_pred, groups = _speaker_data()
    report = fairness_report(y_true, y_pred, groups, n_bootstrap=200, seed=0)
    assert report["reason"] is None
    assert report["statistical_parity"] == pytest.approx(multiclass_statistical_parity(y_pred, groups))
    assert report["equality_of_opportunity"] == pytest.approx(multiclass_equality_of_opp(y_true, y_pred, groups))
    assert report["demographic_parity"] == pytest.approx(demographic_parity(y_true, y_pred, groups))
    assert report["n_utterances"] == 400 and report["n_groups"] == 5 and report["n_bootstrap"] == 200
    for name in ("statistical_parity", "equality_of_opportunity", "demographic_parity"):
        low, high = report["ci95"][name]
        assert 0 <= low < high <= 1
    # same seed, same interval; another seed, another one
    again = fairness_report(y_true, y_pred, groups, n_bootstrap=200, seed=0)
    other = fairness_report(y_true, y_pred, groups, n_bootstrap=200, seed=1)
    assert again["ci95"] == report["ci95"] and other["ci95"] != report["ci95"]


def test_report_without_group_labels_is_not_available():
    y_true, y_pred, _ = _speaker_data(50)
    report = fairness_report(y_true, y_pred, [""] * 50, n_bootstrap=10, seed=0)
    assert report["statistical_parity"] is None and report["ci95"]["statistical_parity"] is None
    assert report["reason"] == "no group labels"
    one = fairness_report(y_true, y_pred, ["female"] * 50, n_bootstrap=10, seed=0)
    assert one["equality_of_opportunity"] is None and "only one group" in one["reason"]


def test_report_drops_unknown_groups_and_keeps_single_member_groups():
    y_true, y_pred, groups = _speaker_data(60)
    groups = groups.astype(object)
    groups[:10] = ""
    groups[10] = "lonely"                   # a group with one utterance
    report = fairness_report(y_true, y_pred, groups, n_bootstrap=50, seed=0)
    known = groups != ""
    assert report["n_utterances"] == 50 and report["smallest_group"] == 1
    assert report["statistical_parity"] == pytest.approx(
        multiclass_statistical_parity(y_pred[known], groups[known].astype(str)))
    assert 0 < report["n_bootstrap"] <= 50


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="lengths differ"):
        fairness_report([0, 1], [0], ["a", "b"], n_bootstrap=5, seed=0)
