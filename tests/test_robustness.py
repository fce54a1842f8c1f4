"""Robustness perturbations (SNR, seeding, filters) and calibration metrics (the stage: tests/test_pipeline.py)."""
import numpy as np
import pytest
import torch

from utils.core.errors import TrustSerError
from utils.core.io import write_wav
from utils.data.utterances import Utterance
from utils.features.source import AudioBank
from utils.runs.identity import RunConfig
from utils.training.pipeline import evaluation_source, make_backbone, make_source
from utils.trust.attacks import measured_snr_db, valid_mask
from utils.trust.calibration import brier_score, confidence_bins, expected_calibration_error
from utils.trust.perturbations import Perturbation, parse_perturbations
from utils.trust.robustness import (BABBLE_TALKERS, PerturbedFeatures, Perturber, convolve_rir, perturbation_seed,
                                    telephone)

SR = 16000
CPU = torch.device("cpu")


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([8000, 6100, 4000])
    t = torch.arange(8000) / SR
    wav = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(3, 8000, generator=g)
    return wav * valid_mask(lengths, 8000), lengths, ["a", "b", "c"]


def _pool():
    g = torch.Generator().manual_seed(1)
    return {f"talker{i}": 0.1 * torch.randn(3000 + 500 * i, generator=g) for i in range(BABBLE_TALKERS + 2)}


@pytest.mark.parametrize("finetune", ["frozen", "unfrozen_last_layer", "unfrozen"])
def test_the_clean_pass_gives_the_features_the_test_split_was_scored_on(finetune, tmp_path):
    """The robustness stage's clean batches equal what the finetune stage's evaluation source gives the same
    utterances (the cache's fp16 values for a frozen backbone or the frozen layers below a trainable last layer;
    the live backbone for unfrozen), bit for bit."""
    run = RunConfig(pretrain_model="wavlm", tiny=True, random_init=True, finetune=finetune, eval_batch_size=4)
    backbone = make_backbone(run, CPU).eval()
    rng = np.random.default_rng(0)
    utts = []
    for i, seconds in enumerate([0.6, 1.3, 0.9, 1.1]):
        path = tmp_path / f"u{i}.wav"
        write_wav(path, 0.1 * rng.standard_normal(int(seconds * SR)).astype(np.float32), SR)
        utts.append(Utterance(f"u{i}", "s", "F", str(path), i % 2))
    tested = make_source(run, backbone, CPU, str(tmp_path / "project"), grad_backbone=finetune != "frozen")
    order = [utts[i] for i in (1, 3, 2, 0)]          # length-sorted, as evaluate() batches them
    expected = tested.batch(tested.prepare(order))
    audio = AudioBank(2, skip_bad=False)
    clean = PerturbedFeatures(evaluation_source(run, backbone, audio, CPU), audio, CPU, None)
    got = clean.batch(clean.prepare(order))
    assert torch.equal(got[1], expected[1]) and torch.equal(got[0], expected[0])


@pytest.mark.parametrize("name", ["white_20db", "white_0db", "pink_10db", "babble_10db", "noise_5db", "white_100db"])
def test_additive_perturbations_hit_the_snr_and_leave_padding_zero(name):
    wav, lengths, keys = _batch()
    noise = [torch.sin(torch.arange(5000) * 0.37) + 0.2 * torch.randn(5000, generator=torch.Generator().manual_seed(2))]
    p = parse_perturbations(name, noise_dir="given" if name.startswith("noise") else None)[0]
    out = Perturber(p, fold=1, pool=_pool(), noises=noise)(wav, lengths, keys)
    snr = measured_snr_db(wav, out - wav, lengths)
    assert torch.all((snr - p.snr_db).abs() < 0.2), snr
    assert torch.all(out * (1 - valid_mask(lengths, 8000)) == 0)


def test_reverberation_keeps_length_and_is_seeded():
    wav, lengths, keys = _batch()
    p = Perturbation("reverb", 300)
    a = Perturber(p, fold=1)(wav, lengths, keys)
    assert a.shape == wav.shape and torch.all(a[1, 6100:] == 0) and torch.all(a[2, 4000:] == 0)
    assert torch.equal(a, Perturber(p, fold=1)(wav, lengths, keys))
    assert not torch.allclose(a, Perturber(p, fold=2)(wav, lengths, keys))
    assert not torch.allclose(a, Perturber(Perturbation("reverb", 800), fold=1)(wav, lengths, keys))
    # the clean level is kept: reverberation, not a level change
    np.testing.assert_allclose(measured_snr_db(wav, a, lengths).numpy(), 0.0, atol=1e-4)
    # the same utterance gets the same draw in another batch (seeded per utterance, not per batch)
    alone = Perturber(p, fold=1)(wav[1:2, :6100], lengths[1:2], keys[1:2])
    torch.testing.assert_close(alone[0], a[1, :6100], atol=1e-5, rtol=1e-4)


def test_identity_impulse_response_returns_the_input():
    wav, lengths, _ = _batch()
    delta = torch.zeros(3, 50)
    delta[:, 0] = 1.0
    torch.testing.assert_close(convolve_rir(wav, lengths, delta), wav, atol=1e-6, rtol=0)


def test_telephone_band_passes_1khz_and_cuts_100hz_and_5khz():
    t = torch.arange(SR) / SR
    tones = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in (100, 1000, 5000)])
    out = telephone(tones, torch.full((3,), SR))
    middle = slice(2000, 14000)        # away from the filters' start-up
    gain_db = 20 * torch.log10(out[:, middle].pow(2).mean(1).sqrt() / tones[:, middle].pow(2).mean(1).sqrt())
    assert gain_db[0] < -20 and abs(gain_db[1]) < 1 and gain_db[2] < -40, gain_db


def test_clipping_and_gain():
    wav, lengths, keys = _batch()
    clipped = Perturber(Perturbation("clip", 25), 1)(wav, lengths, keys)
    peak = wav.abs().amax(1)
    torch.testing.assert_close(clipped.abs().amax(1), 0.25 * peak)
    quiet = Perturber(Perturbation("gain", -20), 1)(wav, lengths, keys)
    np.testing.assert_allclose(measured_snr_db(wav, quiet, lengths).numpy(), 20.0, atol=1e-4)


def test_babble_mixes_other_utterances_only():
    pool = _pool()
    key = "talker0"
    silent_others = {k: (v if k == key else torch.zeros_like(v)) for k, v in pool.items()}
    wav = 0.1 * torch.ones(1, 4000)
    perturber = Perturber(Perturbation("babble", 10), 1, silent_others)
    torch.testing.assert_close(perturber(wav, torch.tensor([4000]), [key]), wav)   # its own audio is never used


def test_parse_perturbations():
    assert [p.name for p in parse_perturbations("white_20db, reverb_300ms,telephone,gain_-20db")] == \
        ["white_20db", "reverb_300ms", "telephone", "gain_-20db"]
    assert [p.name for p in parse_perturbations("white_20db,pink_20db,pink_0db", noise_dir="x")] == \
        ["noise_20db", "noise_0db"]
    assert [p.name for p in parse_perturbations("gain_+6db,gain_6db,white_20db,white_20db")] == ["gain_6db", "white_20db"]
    for bad in ("white_20", "reverb_0.3ms", "echo_3db", "clip_100pct", "noise_10db", ""):
        with pytest.raises(TrustSerError):
            parse_perturbations(bad)
    assert perturbation_seed(1, "white_20db", "k") == 121816309862497231       # the same in every process
    assert perturbation_seed(2, "white_20db", "k") != perturbation_seed(1, "white_20db", "k")


# ---------------------------------------------------------------- calibration

def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    # confidences 0.9, 0.8, 0.7, 0.55 fall in bins (13/15, 14/15], (11/15, 12/15], (10/15, 11/15], (8/15, 9/15]
    # with accuracies 1, 0, 1, 0: ECE = (0.1 + 0.8 + 0.3 + 0.55) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.8 + 0.3 + 0.55) / 4)
    b = confidence_bins(probs, labels)
    assert b["count"].tolist() == [0] * 8 + [1, 0, 1, 1, 0, 1, 0]


def test_ece_is_zero_when_confidence_equals_accuracy_in_every_bin():
    rng = np.random.default_rng(0)
    probs, labels = [], []
    for confidence, n in ((0.5, 10), (0.7, 10), (0.9, 20)):
        hits = int(round(confidence * n))
        for i in range(n):
            p = np.full(3, (1 - confidence) / 2)
            p[0] = confidence
            probs.append(p)
            labels.append(0 if i < hits else 1 + rng.integers(2))
    assert expected_calibration_error(np.array(probs), np.array(labels)) == pytest.approx(0.0, abs=1e-12)


def test_brier_against_sklearn_and_by_hand():
    from sklearn.metrics import brier_score_loss
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(2), size=50)
    labels = rng.integers(2, size=50)
    # sklearn's binary Brier is the mean squared error of the positive class; the multi-class sum is twice it
    assert brier_score(probs, labels) == pytest.approx(2 * brier_score_loss(labels, probs[:, 1]))
    assert brier_score(np.array([[0.7, 0.2, 0.1]]), np.array([1])) == pytest.approx(0.49 + 0.64 + 0.01)
