import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.trust.attacks import (attack_success_rate, fgsm, gaussian_noise, measured_snr_db, pgd, scale_to_snr,
                           valid_mask)

SAMPLE_RATE, NUM_SAMPLES = 8000, 2400


class FrameClassifier(nn.Module):
    """Strided conv over the waveform, mean over the frames that lie inside each length, linear."""

    def __init__(self, kernel: int = 64, stride: int = 32):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(1, 8, kernel, stride=stride)
        self.out = nn.Linear(8, 2)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        frames = torch.tanh(self.conv(wav[:, None, :]))                       # [B, 8, F]
        starts = torch.arange(frames.shape[-1]) * self.stride
        inside = (starts[None, :] + self.kernel <= lengths[:, None]).to(wav.dtype)
        pooled = (frames * inside[:, None, :]).sum(-1) / inside.sum(-1, keepdim=True)
        return self.out(pooled)


def _tones(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0: 300 Hz tone, class 1: 700 Hz tone; random amplitude, phase and length; zero padded."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    freq = torch.where(labels == 0, 300.0, 700.0).double()
    amp = 0.1 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    phase = 6.28 * torch.rand(n, generator=g, dtype=torch.float64)
    t = torch.arange(NUM_SAMPLES, dtype=torch.float64) / SAMPLE_RATE
    wav = amp[:, None] * torch.sin(2 * torch.pi * freq[:, None] * t + phase[:, None])
    wav = wav + 0.01 * torch.randn(wav.shape, generator=g, dtype=torch.float64)
    lengths = torch.randint(NUM_SAMPLES // 2, NUM_SAMPLES + 1, (n,), generator=g)
    return wav * valid_mask(lengths, NUM_SAMPLES).double(), lengths, labels


@pytest.fixture(scope="module")
def trained(one_thread):
    torch.manual_seed(0)
    model = FrameClassifier().double()
    wav, lengths, labels = _tones(64, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(model(wav, lengths), labels).backward()
        optimizer.step()
    model.eval()
    test_wav, test_lengths, test_labels = _tones(48, seed=1)
    assert (model(test_wav, test_lengths).argmax(-1) == test_labels).float().mean() >= 0.95
    return model, test_wav, test_lengths, test_labels


def _loss_fn(model, lengths, labels, per_utterance=True):
    reduction = "none" if per_utterance else "sum"
    return lambda x: F.cross_entropy(model(x, lengths), labels, reduction=reduction)


def _flips(model, wav, lengths, labels, delta) -> int:
    with torch.no_grad():
        return int((model(wav + delta, lengths).argmax(-1) != labels).sum())


@pytest.mark.parametrize("snr", [0.0, 10.0, 40.0])
def test_all_methods_hit_the_snr_and_leave_padding_zero(trained, snr):
    model, wav, lengths, labels = trained
    deltas = {
        "fgsm": fgsm(wav, lengths, _loss_fn(model, lengths, labels), snr),
        "pgd": pgd(wav, lengths, _loss_fn(model, lengths, labels), snr, steps=3),
        "noise": gaussian_noise(wav, lengths, snr, torch.Generator().manual_seed(0)),
    }
    padding = valid_mask(lengths, NUM_SAMPLES) == 0
    assert padding.any()
    for name, delta in deltas.items():
        assert delta.shape == wav.shape
        assert torch.allclose(measured_snr_db(wav, delta, lengths), torch.full((len(wav),), snr,
                              dtype=wav.dtype), atol=0.1), name
        assert (delta[padding] == 0).all(), name


def test_scale_to_snr_per_utterance_by_hand():
    wav = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 2.0, 0.0, 0.0]])
    lengths = torch.tensor([4, 2])
    direction = torch.ones(2, 4)
    delta = scale_to_snr(direction, wav, lengths, snr_db=20.0)
    # RMS 1 and 2 on the valid samples -> perturbation RMS 0.1 and 0.2, padding zero
    assert torch.allclose(delta, torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.0, 0.0]]))


def test_fgsm_strength_grows_as_snr_falls(trained):
    model, wav, lengths, labels = trained
    loss_fn = _loss_fn(model, lengths, labels)
    flips_10 = _flips(model, wav, lengths, labels, fgsm(wav, lengths, loss_fn, 10.0))
    flips_40 = _flips(model, wav, lengths, labels, fgsm(wav, lengths, loss_fn, 40.0))
    assert flips_10 > flips_40


def test_pgd_at_least_as_strong_as_fgsm(trained):
    model, wav, lengths, labels = trained
    loss_fn = _loss_fn(model, lengths, labels)
    for snr in (10.0, 20.0):
        fgsm_delta = fgsm(wav, lengths, loss_fn, snr)
        pgd_delta = pgd(wav, lengths, loss_fn, snr)
        assert _flips(model, wav, lengths, labels, pgd_delta) >= _flips(model, wav, lengths, labels, fgsm_delta)
        with torch.no_grad():
            assert (loss_fn(wav + pgd_delta) >= loss_fn(wav + fgsm_delta) - 1e-12).all()


def test_adversarial_beats_noise_at_same_snr(trained):
    model, wav, lengths, labels = trained
    noise = gaussian_noise(wav, lengths, 10.0, torch.Generator().manual_seed(0))
    attack = fgsm(wav, lengths, _loss_fn(model, lengths, labels), 10.0)
    assert _flips(model, wav, lengths, labels, attack) > _flips(model, wav, lengths, labels, noise)


def test_batched_fgsm_equals_one_utterance_at_a_time(trained):
    model, wav, lengths, labels = trained
    batched = fgsm(wav, lengths, _loss_fn(model, lengths, labels, per_utterance=False), 20.0)
    for i in range(0, len(wav), 7):
        single = fgsm(wav[i:i + 1], lengths[i:i + 1], _loss_fn(model, lengths[i:i + 1], labels[i:i + 1]), 20.0)
        torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-9, atol=1e-12)


def test_pgd_with_summed_loss_still_meets_budget(trained):
    model, wav, lengths, labels = trained
    delta = pgd(wav, lengths, _loss_fn(model, lengths, labels, per_utterance=False), 15.0, steps=4)
    assert torch.allclose(measured_snr_db(wav, delta, lengths), torch.full((len(wav),), 15.0,
                          dtype=wav.dtype), atol=0.1)


def test_gaussian_noise_is_reproducible_with_generator():
    wav = torch.randn(3, 100)
    lengths = torch.tensor([100, 50, 80])
    a = gaussian_noise(wav, lengths, 5.0, torch.Generator().manual_seed(3))
    b = gaussian_noise(wav, lengths, 5.0, torch.Generator().manual_seed(3))
    c = gaussian_noise(wav, lengths, 5.0, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attack_success_rate_counts_only_correct_utterances():
    y = torch.tensor([0, 1, 1, 0, 1])
    clean = torch.tensor([0, 1, 0, 0, 1])      # 4 correct
    attacked = torch.tensor([1, 1, 0, 0, 0])   # two of the correct ones flipped
    assert attack_success_rate(y, clean, attacked) == pytest.approx(50.0)
    assert attack_success_rate(y, 1 - y, attacked) != attack_success_rate(y, 1 - y, attacked)  # NaN


def test_attack_fold_attacks_only_what_its_own_clean_pass_gets_right(trained):
    """Given clean predictions that call every utterance correct (as a stale cache could), the fold attacks only
    those its own clean pass classifies correctly: the same outcome as letting it compute the clean pass."""
    from utils.data.utterances import Utterance
    from utils.features.source import AudioBank
    from utils.trust.safety import AttackSpec, attack_fold

    model, wav, lengths, labels = trained
    model = copy.deepcopy(model).float()
    with torch.no_grad():
        model.out.bias += torch.tensor([1.5, -1.5])   # push a few utterances to the wrong class
    audio = AudioBank(max_seconds=1.0, skip_bad=False)
    test = []
    for i in range(len(wav)):
        audio.wavs[f"u{i}.wav"] = wav[i, : lengths[i]].float()
        test.append(Utterance(f"u{i}", "spk", "female", f"u{i}.wav", int(labels[i])))

    def backbone(x, lens):
        return x, None, lens

    attack = AttackSpec("fgsm", snr=10.0, batch_size=8, fp32=True)
    device = torch.device("cpu")
    live = attack_fold(backbone, model, test, audio, attack, device, num_classes=2)
    told = attack_fold(backbone, model, test, audio, attack, device, num_classes=2, clean=labels.clone())
    assert 0 < live["num_attacked"] < len(test)
    assert live["num_flipped"] > 0
    for key in ("num_attacked", "num_flipped", "success_rate", "clean_uar"):
        assert told[key] == pytest.approx(live[key]), key
