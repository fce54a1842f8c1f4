"""Perturbations of a padded waveform batch at a fixed signal-to-noise ratio, for any model.

Every function takes `wav [B, T]` with valid lengths `lengths [B]` and returns the perturbation
`delta [B, T]` (attack with `wav + delta`). Per utterance, delta's RMS over the valid samples is
RMS(signal) / 10^(snr_db / 20), i.e. the utterance-to-perturbation SNR is exactly snr_db, and
delta is zero beyond the length.

`loss_fn(wav) -> Tensor` is built by the caller (model in eval mode, targets bound), e.g.
`lambda x: F.cross_entropy(model(x, lengths), y, reduction="none")`. It may return per-utterance
losses [B] (PGD then keeps each utterance's strongest step) or their sum (a scalar); each
utterance's loss must depend on that utterance alone, so the gradient of the sum is per utterance.
"""
from typing import Callable

import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]


def valid_mask(lengths: torch.Tensor, num_samples: int) -> torch.Tensor:
    """[B, T] float mask, 1 on each utterance's valid samples."""
    positions = torch.arange(num_samples, device=lengths.device)
    return (positions[None, :] < lengths[:, None]).float()


def _rms(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((x * mask).pow(2).sum(dim=1) / mask.sum(dim=1).clamp_min(1)).sqrt()


def scale_to_snr(direction: torch.Tensor, wav: torch.Tensor, lengths: torch.Tensor,
                 snr_db: float) -> torch.Tensor:
    """direction rescaled per utterance to RMS(wav) / 10^(snr_db/20) on the valid samples, 0 elsewhere.

    A direction that is zero on all valid samples (or a silent utterance) gives a zero perturbation.
    """
    mask = valid_mask(lengths.to(wav.device), wav.shape[1]).to(wav.dtype)
    direction = direction.detach() * mask
    target_rms = _rms(wav.detach(), mask) / 10 ** (snr_db / 20)
    gain = target_rms / _rms(direction, mask).clamp_min(torch.finfo(wav.dtype).tiny)
    return direction * gain[:, None]


def measured_snr_db(wav: torch.Tensor, perturbation: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] SNR in dB of wav over perturbation, both on the valid samples."""
    mask = valid_mask(lengths.to(wav.device), wav.shape[1]).to(wav.dtype)
    signal = (wav * mask).pow(2).sum(dim=1)
    noise = (perturbation * mask).pow(2).sum(dim=1)
    return 10 * torch.log10(signal / noise)


def _loss_and_grad(wav: torch.Tensor, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss as returned by loss_fn, detached; gradient of its sum with respect to wav)."""
    x = wav.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x)
        grad, = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def fgsm(wav: torch.Tensor, lengths: torch.Tensor, loss_fn: LossFn, snr_db: float) -> torch.Tensor:
    """Fast gradient sign method: sign of the input gradient of the loss, scaled to the SNR.

    As the original's FGSM (which scaled the sign by RMS(signal) / (10^(snr/20) * RMS(sign))),
    here per utterance and over valid samples only.
    """
    _, grad = _loss_and_grad(wav, loss_fn)
    return scale_to_snr(grad.sign(), wav, lengths, snr_db)


def pgd(wav: torch.Tensor, lengths: torch.Tensor, loss_fn: LossFn, snr_db: float,
        steps: int = 10, step_frac: float = 0.25) -> torch.Tensor:
    """Projected gradient ascent with signed steps on the sphere of the SNR budget.

    Starts from the FGSM perturbation; each step adds a signed gradient step whose RMS is
    step_frac times the budget RMS, then rescales delta back to the budget (an L2 sphere per
    utterance: the perturbation energy is the flag's, as for FGSM and noise, so success rates
    at one SNR compare like for like). With per-utterance losses, each utterance keeps the
    delta that gave it the highest loss, so PGD is never weaker than FGSM in loss.
    """
    delta = fgsm(wav, lengths, loss_fn, snr_db)
    best_delta, best_loss = delta, None
    for _ in range(steps):
        loss, grad = _loss_and_grad(wav + delta, loss_fn)
        best_delta, best_loss = _keep_best(best_delta, best_loss, delta, loss)
        step = step_frac * scale_to_snr(grad.sign(), wav, lengths, snr_db)
        delta = scale_to_snr(delta + step, wav, lengths, snr_db)
    with torch.no_grad():
        loss = loss_fn(wav + delta)
    best_delta, _ = _keep_best(best_delta, best_loss, delta, loss)
    return best_delta


def _keep_best(best_delta: torch.Tensor, best_loss: torch.Tensor | None, delta: torch.Tensor,
               loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per utterance, the delta with the higher loss; a scalar loss just keeps the latest delta."""
    if loss.dim() == 0:
        return delta, None
    if best_loss is None:
        return delta, loss
    better = loss > best_loss
    return torch.where(better[:, None], delta, best_delta), torch.where(better, loss, best_loss)


def gaussian_noise(wav: torch.Tensor, lengths: torch.Tensor, snr_db: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """White Gaussian noise at the SNR (generator on wav's device, for reproducible draws)."""
    noise = torch.randn(wav.shape, generator=generator, device=wav.device, dtype=wav.dtype)
    return scale_to_snr(noise, wav, lengths, snr_db)


def attack_success_rate(y_true: torch.Tensor, clean_pred: torch.Tensor, attacked_pred: torch.Tensor) -> float:
    """Percent of the correctly classified utterances that the perturbation makes wrong (the original's
    definition: it attacked only utterances the model got right). NaN when none was right."""
    correct = clean_pred == y_true
    if not bool(correct.any()):
        return float("nan")
    return 100.0 * float((attacked_pred[correct] != y_true[correct]).float().mean())
