"""utils/trust/privacy.py: the linear gender probe against a direct scikit-learn computation, collapse flag, embeddings."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from model.heads import CNNSelfAttention
from utils.data.utterances import Utterance
from utils.trust.privacy import collapsed, linear_probe, pooled_embeddings


def embeddings(gender_shift: float, n_speakers: int = 12, per_speaker: int = 10, seed: int = 0):
    """Speakers alternate female/male; each has its own offset; gender moves two of eight dimensions."""
    rng = np.random.default_rng(seed)
    genders = np.repeat(np.arange(n_speakers) % 2, per_speaker)
    speakers = np.repeat([f"spk{i}" for i in range(n_speakers)], per_speaker)
    offsets = np.repeat(rng.normal(0, 1, (n_speakers, 8)), per_speaker, axis=0)
    x = offsets + rng.normal(0, 1, (len(genders), 8))
    x[:, :2] += gender_shift * genders[:, None]
    return x, genders, speakers


def direct_sklearn_uar(x, y, groups, n_splits):
    predicted = np.full(len(y), -1)
    for train, test in StratifiedGroupKFold(n_splits=n_splits).split(x, y, groups):
        assert not set(groups[train]) & set(groups[test])          # no speaker on both sides
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
    return 100 * balanced_accuracy_score(y, predicted)


@pytest.mark.slow
@pytest.mark.parametrize("shift", [0.0, 4.0])
def test_linear_probe_equals_a_direct_scikit_learn_computation(shift):
    x, y, groups = embeddings(shift)
    probe = linear_probe(x, y, groups, n_bootstrap=300, seed=1)
    assert probe["uar"] == pytest.approx(direct_sklearn_uar(x, y, groups, 5), abs=1e-9)
    assert probe["n_splits"] == 5 and probe["num_utterances"] == 120 and probe["num_speakers"] == 12
    low, high = probe["ci95"]
    assert 0 <= low < high <= 100
    if shift:
        assert probe["uar"] > 80 and low > 60          # gender leaks, and the interval says so
    else:
        assert probe["uar"] < 60 and low < 50         # nothing to find (held-out speakers can even fall below 50)
    assert linear_probe(x, y, groups, n_bootstrap=300, seed=1) == probe


def test_fewer_folds_with_few_speakers_and_none_without_two_per_gender():
    x, y, groups = embeddings(4.0, n_speakers=6)
    probe = linear_probe(x, y, groups, n_bootstrap=50)
    assert probe["n_splits"] == 3
    assert probe["uar"] == pytest.approx(direct_sklearn_uar(x, y, groups, 3), abs=1e-9)
    x, y, groups = embeddings(4.0, n_speakers=3)
    probe = linear_probe(x, y, groups, n_bootstrap=50)
    assert probe["uar"] is None and probe["ci95"] is None and "1 male" in probe["reason"]


def test_collapse_is_one_predicted_class_for_every_test_utterance():
    assert collapsed(SimpleNamespace(predictions=np.array([1, 1, 1])))
    assert not collapsed(SimpleNamespace(predictions=np.array([0, 1, 1])))


class FakeSource:
    """Hidden states [L, F, D] per utterance, padded as the feature sources do."""

    def __init__(self, feats: dict):
        self.feats = feats

    def length(self, u):
        return self.feats[u.key].shape[1]

    def batch(self, utts):
        from utils.data.utterances import pad_features
        return pad_features([self.feats[u.key] for u in utts])


@pytest.mark.parametrize("pooling", ["mean", "att"])
def test_pooled_embeddings_are_what_the_classifier_sees_in_utterance_order(pooling):
    torch.manual_seed(0)
    head = CNNSelfAttention(input_dim=6, num_enc_layers=3, output_class_num=4, hidden_dim=16, conv_layers=2,
                            pooling_method=pooling).eval()
    lengths = [7, 3, 11, 5, 9]
    feats = {f"u{i}": torch.randn(3, n, 6) for i, n in enumerate(lengths)}
    utts = [Utterance(k, "spk", "F", f"{k}.wav", 0) for k in feats]
    got = pooled_embeddings(head, FakeSource(feats), utts, batch_size=2)
    assert got.shape == (5, 16)
    with torch.no_grad():
        for i, u in enumerate(utts):
            one = feats[u.key].unsqueeze(1)
            mask = torch.ones(1, one.shape[2], dtype=torch.bool)
            np.testing.assert_allclose(got[i], head.embed(one, mask)[0].numpy(), atol=1e-5)
            np.testing.assert_allclose(head.out_layer(torch.from_numpy(got[i]).float()).numpy(),
                                       head(one, mask)[0].numpy(), atol=1e-5)
