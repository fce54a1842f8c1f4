"""Safety: attack success rate of FGSM / PGD / Gaussian noise at a given SNR on each fold's test set.

Only utterances the model classifies correctly are attacked; an attack succeeds when the prediction changes.
The gradient flows from the loss to the waveform through the backbone's own front end.
"""
import logging
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.attacks import attack_success_rate, fgsm, gaussian_noise, measured_snr_db, pgd  # noqa: E402
from utils.cli import base_parser  # noqa: E402
from utils.data import Utterance, length_sorted_batches, load_fold, pad_waveforms  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.features import AudioBank, autocast_for  # noqa: E402
from utils.metrics import classification_scores  # noqa: E402
from utils.paths import attack_dir, finetune_dir  # noqa: E402
from utils.pipeline import (aggregate, evaluate_folds, load_trained, make_source, resolve_device,  # noqa: E402
                            run_flags, start_stage)
from utils.training import evaluate  # noqa: E402

log = logging.getLogger("trust-ser")
RESULT_KEYS = ["success_rate", "measured_snr_db", "clean_uar"]


def attack_batch(backbone, head, wav: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, args,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Perturbation of one padded batch, the predictions on the clean audio and those on the perturbed audio."""
    clean_logits = []

    def logits(x: torch.Tensor) -> torch.Tensor:
        hidden, _, mask = backbone(x, lengths)
        return head(hidden, mask)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        out = logits(x)
        if not clean_logits:  # FGSM and PGD take their first gradient at the clean audio
            clean_logits.append(out.detach())
        return F.cross_entropy(out, labels, reduction="none")

    if args.attack_method == "fgsm":
        delta = fgsm(wav, lengths, loss_fn, args.snr)
    elif args.attack_method == "pgd":
        delta = pgd(wav, lengths, loss_fn, args.snr, steps=args.pgd_steps)
    else:
        delta = gaussian_noise(wav, lengths, args.snr, generator)
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


def attack_fold(backbone, head, test: list[Utterance], audio: AudioBank, args, device, num_classes: int,
                clean: torch.Tensor | None = None) -> dict:
    """Attack the correctly classified test utterances in length-sorted batches; success rate and measured SNR.

    `clean`: the model's test predictions if already known (from the feature cache); else a live pass makes them.
    Either way an utterance is attacked only if the attack's own pass on its clean audio classifies it correctly.
    On CUDA the passes run under bf16 autocast, as every other evaluation, unless args.fp32 (the input gradient is
    taken with respect to the fp32 waveform either way); on CPU they are fp32.
    """
    with nullcontext() if args.fp32 else autocast_for(device):
        return _attack_fold(backbone, head, test, audio, args, device, num_classes, clean)


def attack_precision(args, device: torch.device) -> str:
    """What attack_fold runs in: fp32 on CPU or with args.fp32, else bf16 autocast."""
    return "fp32" if args.fp32 or device.type != "cuda" else "bf16 autocast"


def _attack_fold(backbone, head, test: list[Utterance], audio: AudioBank, args, device, num_classes: int,
                 clean: torch.Tensor | None) -> dict:
    wavs = [audio.get(u.path) for u in test]
    labels = torch.tensor([u.label for u in test])
    clean = predict(backbone, head, wavs, device, args.eval_batch_size) if clean is None else clean.clone()
    attacked = clean.clone()
    candidates = [i for i in range(len(test)) if clean[i] == labels[i]]
    generator = torch.Generator(device=device).manual_seed(0)
    snrs = []
    for idx in length_sorted_batches([len(wavs[i]) for i in candidates], args.eval_batch_size):
        chosen = [candidates[i] for i in idx]
        wav, lengths = pad_waveforms([wavs[i] for i in chosen])
        wav, lengths, y = wav.to(device), lengths.to(device), labels[chosen].to(device)
        delta, live_clean, predictions = attack_batch(backbone, head, wav, lengths, y, args, generator)
        # a cached prediction can differ from this pass in the last bits: only what this pass gets right is attacked
        clean[chosen] = live_clean.cpu()
        attacked[chosen] = torch.where(live_clean == y, predictions, live_clean).cpu()
        snrs += measured_snr_db(wav, delta, lengths).tolist()
    snr_mean = float(torch.tensor(snrs).mean()) if snrs else None
    if snr_mean is not None and abs(snr_mean - args.snr) > 0.1:
        log.warning(f"measured perturbation SNR {snr_mean:.2f} dB differs from --snr {args.snr} by more than 0.1 dB")
    success = attack_success_rate(labels, clean, attacked)
    return {"success_rate": None if math.isnan(success) else success,
            "num_attacked": int((clean == labels).sum()), "num_flipped": int((attacked != clean).sum()),
            "num_test": len(test), "measured_snr_db": snr_mean, "measured_snr_db_min": min(snrs) if snrs else None,
            "measured_snr_db_max": max(snrs) if snrs else None,
            "clean_uar": classification_scores(labels.numpy(), clean.numpy(), num_classes)["uar"]}


def cached_predictions(head, backbone, source, test: list[Utterance], args, num_classes: int) -> torch.Tensor:
    """The head's test predictions from the stored hidden states, as the finetune and fairness stages see them."""
    return torch.from_numpy(evaluate(head, backbone, source, test, args.eval_batch_size, num_classes).predictions)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--attack_method", default="fgsm", choices=["fgsm", "pgd", "gaussian_noise"])
    parser.add_argument("--snr", "-snr", default=45, type=int, help="SNR (dB) of the perturbation")
    parser.add_argument("--pgd_steps", default=10, type=int)
    parser.add_argument("--fp32", action="store_true",
                        help="attack in fp32 on CUDA too, as the original (no bf16 autocast; slower)")
    stage = start_stage(parser)
    args, out_dir = stage.args, attack_dir(stage.project_dir, stage.args)
    device = resolve_device(args.device)

    def evaluate_fold(fold: int) -> dict:
        backbone, head = load_trained(args, finetune_dir(stage.project_dir, args), fold, device, stage.corpus.num_classes)
        test = load_fold(stage.project_dir, args.dataset, fold)["test"]
        if args.fp32:  # the original's clean pass: live, fp32
            audio, clean = AudioBank(args.audio_duration, args.skip_bad), None
            test = [u for u in test if audio.get(u.path) is not None]
        else:
            source = make_source(args, backbone, device, stage.project_dir, grad_backbone=False)
            test = source.prepare(test)
            audio, clean = source.audio, cached_predictions(head, backbone, source, test, args, stage.corpus.num_classes)
        result = {**attack_fold(backbone, head, test, audio, args, device, stage.corpus.num_classes, clean),
                  "skipped_bad_audio": len(audio.bad)}
        log.info(f"fold {fold}: {args.attack_method} at {args.snr} dB flips {result['num_flipped']} of "
                 f"{result['num_attacked']} correctly classified utterances ({result['success_rate']}%)")
        return result

    evaluate_folds(stage, out_dir, evaluate_fold)
    meta = {**run_flags(args), "attack": {"method": args.attack_method, "snr": args.snr, "pgd_steps": args.pgd_steps,
                                          "precision": attack_precision(args, device)}}
    results = aggregate(out_dir, stage.corpus.fold_ids(), RESULT_KEYS, meta)
    log.info(f"attack success rate {results['average']['success_rate']:.2f}%; results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
