"""Attacking a trained model's test set: FGSM / PGD / Gaussian noise at a given SNR, in length-sorted batches.

Only utterances the model classifies correctly are attacked; an attack succeeds when the prediction changes.
The gradient flows from the loss to the waveform through the backbone's own front end.
"""
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from utils.trust.attacks import attack_success_rate, fgsm, gaussian_noise, measured_snr_db, pgd
from utils.data.utterances import Utterance, length_sorted_batches, pad_waveforms
from utils.features.source import AudioBank, low_precision
from utils.training.metrics import classification_scores
from utils.runs.identity import RunConfig
from utils.training.pipeline import make_source
from utils.training.protocol import crop_seconds, protocol_of, train_mode
from utils.core.progress import progress
from utils.training.loop import evaluate

log = logging.getLogger("trust-ser")


@dataclass(frozen=True)
class AttackSpec:
    """One attack: method, SNR (dB) of the perturbation, PGD steps, batch size, fp32 (no bf16 autocast on CUDA),
    the input gradient taken in train mode (--protocol original) and how UAR averages (utils/training/metrics.py)."""
    method: str = "fgsm"
    snr: float = 45
    pgd_steps: int = 10
    batch_size: int = 32
    fp32: bool = False
    gradient_in_train_mode: bool = False
    uar_classes: str = "labels"


def attack_spec(run: RunConfig, method: str, snr: float, pgd_steps: int, fp32: bool) -> AttackSpec:
    """The attack as the run's protocol runs it (fp32 under --protocol original, whatever --fp32 says)."""
    protocol = protocol_of(run)
    return AttackSpec(method, snr, pgd_steps, run.eval_batch_size, fp32 or protocol.attack_fp32_live,
                      protocol.attack_gradient_in_train_mode, protocol.uar_classes)


def clean_inputs(run: RunConfig, attack: AttackSpec, backbone, head, test: list[Utterance], device,
                 project_dir: str, num_classes: int) -> tuple[list[Utterance], AudioBank, torch.Tensor | None]:
    """The readable test utterances, their audio and the clean predictions attack_fold starts from: None with
    attack.fp32 (attack_fold's own live fp32 pass, as the original), else the feature cache's, as the finetune
    stage saw them."""
    if attack.fp32:
        audio = AudioBank(crop_seconds(run, backbone), run.skip_bad)
        return audio.readable(test), audio, None
    source = make_source(run, backbone, device, project_dir, grad_backbone=False)
    test = source.prepare(test)
    return test, source.audio, cached_predictions(head, backbone, source, test, run.eval_batch_size, num_classes)


def attack_batch(backbone, head, wav: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, attack: AttackSpec,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perturbation of one padded batch, the predictions on the clean audio and those on the perturbed audio."""
    clean_logits = []

    def logits(x: torch.Tensor) -> torch.Tensor:
        hidden, _, mask = backbone(x, lengths)
        return head(hidden, mask)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        with train_mode(head, backbone) if attack.gradient_in_train_mode else nullcontext():
            out = logits(x)
        if not clean_logits and not attack.gradient_in_train_mode:  # first gradient at the clean audio, eval mode
            clean_logits.append(out.detach())
        return F.cross_entropy(out, labels, reduction="none")

    if attack.method == "fgsm":
        delta = fgsm(wav, lengths, loss_fn, attack.snr)
    elif attack.method == "pgd":
        delta = pgd(wav, lengths, loss_fn, attack.snr, steps=attack.pgd_steps)
    else:
        delta = gaussian_noise(wav, lengths, attack.snr, generator)
    with torch.no_grad():
        clean = clean_logits[0] if clean_logits else logits(wav)
        attacked = logits(wav + delta).argmax(1)
    return delta, clean.argmax(1), attacked


def predict(backbone, head, wavs: list[torch.Tensor], device, batch_size: int) -> torch.Tensor:
    preds = torch.zeros(len(wavs), dtype=torch.long)
    for idx in length_sorted_batches([len(w) for w in wavs], batch_size):
        wav, lengths = pad_waveforms([wavs[i] for i in idx])
        with torch.no_grad():
            hidden, _, mask = backbone(wav.to(device), lengths.to(device))
            preds[idx] = head(hidden, mask).argmax(1).cpu()
    return preds


def attack_fold(backbone, head, test: list[Utterance], audio: AudioBank, attack: AttackSpec, device, num_classes: int,
                clean: torch.Tensor | None = None) -> dict:
    """Attack the correctly classified test utterances in length-sorted batches; success rate and measured SNR.

    `clean`: the model's test predictions if already known (from the feature cache); else a live pass makes them.
    Either way an utterance is attacked only if the attack's own pass on its clean audio classifies it correctly.
    On CUDA the passes run under bf16 autocast with the frozen layers' bf16 weights (low_precision), as every other
    evaluation, unless attack.fp32 (the input gradient is taken with respect to the fp32 waveform either way); on
    CPU they are fp32.
    """
    with nullcontext() if attack.fp32 else low_precision(backbone, device):
        return _attack_fold(backbone, head, test, audio, attack, device, num_classes, clean)


def attack_precision(attack: AttackSpec, device: torch.device) -> str:
    """What attack_fold runs in: fp32 on CPU or with attack.fp32, else bf16 autocast."""
    return "fp32" if attack.fp32 or device.type != "cuda" else "bf16 autocast"


def _attack_fold(backbone, head, test: list[Utterance], audio: AudioBank, attack: AttackSpec, device, num_classes: int,
                 clean: torch.Tensor | None) -> dict:
    wavs = [audio.get(u.path) for u in test]
    labels = torch.tensor([u.label for u in test])
    clean = predict(backbone, head, wavs, device, attack.batch_size) if clean is None else clean.clone()
    attacked = clean.clone()
    candidates = [i for i in range(len(test)) if clean[i] == labels[i]]
    generator = torch.Generator(device=device).manual_seed(0)
    snrs = []
    batches = length_sorted_batches([len(wavs[i]) for i in candidates], attack.batch_size)
    for idx in progress(batches, desc=f"{attack.method} at {attack.snr:g} dB"):
        chosen = [candidates[i] for i in idx]
        wav, lengths = pad_waveforms([wavs[i] for i in chosen])
        wav, lengths, y = wav.to(device), lengths.to(device), labels[chosen].to(device)
        delta, live_clean, predictions = attack_batch(backbone, head, wav, lengths, y, attack, generator)
        # a cached prediction can differ from this pass in the last bits: only what this pass gets right is attacked
        clean[chosen] = live_clean.cpu()
        attacked[chosen] = torch.where(live_clean == y, predictions, live_clean).cpu()
        snrs += measured_snr_db(wav, delta, lengths).tolist()
    snr_mean = float(torch.tensor(snrs).mean()) if snrs else None
    if snr_mean is not None and abs(snr_mean - attack.snr) > 0.1:
        log.warning(f"measured perturbation SNR {snr_mean:.2f} dB differs from --snr {attack.snr} by more than 0.1 dB")
    success = attack_success_rate(labels, clean, attacked)
    return {"success_rate": None if math.isnan(success) else success,
            "num_attacked": int((clean == labels).sum()), "num_flipped": int((attacked != clean).sum()),
            "num_test": len(test), "measured_snr_db": snr_mean, "measured_snr_db_min": min(snrs) if snrs else None,
            "measured_snr_db_max": max(snrs) if snrs else None,
            "clean_uar": classification_scores(labels.numpy(), clean.numpy(), num_classes, attack.uar_classes)["uar"]}


def cached_predictions(head, backbone, source, test: list[Utterance], batch_size: int,
                       num_classes: int) -> torch.Tensor:
    """The head's test predictions from the stored hidden states, as the finetune and fairness stages see them."""
    return torch.from_numpy(evaluate(head, backbone, source, test, batch_size, num_classes).predictions)
