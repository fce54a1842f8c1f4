"""Robustness: a trained model's test UAR on clean audio and under everyday degradations of the waveform.

Each perturbation is applied to the padded waveform batch on the device, before the backbone, and is seeded per
utterance (from the fold, the perturbation's name and the utterance key), so a draw does not depend on the batch
it lands in, the batch size or the device count. What it did is measured on the audio actually scored: the SNR
of the clean signal over the change (perturbed - clean) and the level change, both over the valid samples.

Perturbations (name = kind, then its setting as an integer with its unit; 16 kHz audio):
  white_<S>db, pink_<S>db   synthetic Gaussian noise, flat / 1/f power spectrum, at S dB SNR
  noise_<S>db               a real noise recording from --noise_dir (seeded choice and offset, looped), at S dB SNR
  babble_<S>db              the sum of BABBLE_TALKERS other test utterances (each at unit RMS, seeded choice and
                            offset, looped), at S dB SNR
  reverb_<T>ms              convolution with a synthetic room impulse response of RT60 = T ms: seeded Gaussian noise
                            under an exponential envelope falling 60 dB over T ms (no direct path), the result
                            cut to the utterance's length and brought back to its RMS (reverberation, not level)
  telephone                 300-3400 Hz band (2nd-order high-pass and low-pass biquads, each applied twice), then
                            16 kHz -> 8 kHz -> 16 kHz resampling
  clip_<P>pct               hard clipping at P% of the utterance's own peak amplitude (no gain afterwards)
  gain_<G>db                the level changed by G dB
"""
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from utils.core.errors import TrustSerError
from utils.data.audio import TARGET_SR, BadAudioError, read_audio, to_16k_mono
from utils.data.utterances import Utterance
from utils.features.source import AudioBank, FeatureSource
from utils.training.loop import evaluate
from utils.training.metrics import classification_scores
from utils.trust.attacks import measured_snr_db, scale_to_snr, valid_mask
from utils.trust.perturbations import ADDITIVE, Perturbation

log = logging.getLogger("trust-ser")

BABBLE_TALKERS = 4
TELEPHONE_BAND = (300.0, 3400.0)
TELEPHONE_RATE = 8000
NOISE_SUFFIXES = (".wav", ".flac")


def perturbation_seed(fold: int, name: str, key: str) -> int:
    """A stable 63-bit seed (the same in every process and on every machine, unlike hash())."""
    digest = hashlib.sha256(f"{fold}/{name}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def load_noises(noise_dir: str | Path) -> list[torch.Tensor]:
    """Every WAV/FLAC under the folder (recursively, sorted by path) as 16 kHz mono."""
    folder = Path(noise_dir)
    if not folder.is_dir():
        raise TrustSerError(f"--noise_dir {folder}: folder not found")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES and p.is_file())
    if not paths:
        raise TrustSerError(f"--noise_dir {folder}: no .wav or .flac files in it")
    noises = []
    for path in paths:
        try:
            noise = torch.from_numpy(to_16k_mono(*read_audio(path)))
        except BadAudioError as err:
            raise TrustSerError(f"--noise_dir: {err}") from None
        if float(noise.abs().max()) == 0.0:
            raise TrustSerError(f"--noise_dir: {path} is silent")
        noises.append(noise)
    return noises


def _looped(source: torch.Tensor, n: int, offset: int) -> torch.Tensor:
    """n samples of source from offset on, starting over at its end."""
    reps = -(-(offset + n) // len(source))
    return source.repeat(reps)[offset:offset + n]


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    return x / x.pow(2).mean().sqrt().clamp_min(1e-12)


def pink(white: torch.Tensor) -> torch.Tensor:
    """1/f power spectrum from white noise of the same length (the DC bin removed)."""
    spectrum = torch.fft.rfft(white)
    f = torch.arange(spectrum.shape[-1], device=white.device, dtype=white.dtype)
    return torch.fft.irfft(spectrum * torch.where(f > 0, f.clamp_min(1).rsqrt(), 0.0), n=white.shape[-1])


def synthetic_rir(rt60_s: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gaussian noise under exp decay: the amplitude falls 60 dB over rt60_s, which is also its length."""
    n = max(int(rt60_s * TARGET_SR), 1)
    t = torch.arange(n, device=device, dtype=torch.float32) / TARGET_SR
    return torch.randn(n, generator=generator, device=device) * 10 ** (-3 * t / rt60_s)


def convolve_rir(wav: torch.Tensor, lengths: torch.Tensor, rirs: torch.Tensor) -> torch.Tensor:
    """[B, T] convolved with per-utterance impulse responses [B, L], cut to T and zero beyond each length (the
    response is causal, so padding after an utterance never reaches its valid samples)."""
    out = AF.fftconvolve(wav, rirs)[:, :wav.shape[1]]
    return out * valid_mask(lengths.to(wav.device), wav.shape[1]).to(wav.dtype)


def telephone(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """300-3400 Hz band-pass, then through 8 kHz and back; same shape, zero beyond each length."""
    low, high = TELEPHONE_BAND
    x = wav
    for _ in range(2):
        x = AF.highpass_biquad(x, TARGET_SR, low)
        x = AF.lowpass_biquad(x, TARGET_SR, high)
    x = AF.resample(AF.resample(x, TARGET_SR, TELEPHONE_RATE), TELEPHONE_RATE, TARGET_SR)
    x = torch.nn.functional.pad(x, (0, max(wav.shape[1] - x.shape[1], 0)))[:, :wav.shape[1]]
    return x * valid_mask(lengths.to(wav.device), wav.shape[1]).to(wav.dtype)


def clip(wav: torch.Tensor, lengths: torch.Tensor, fraction: float) -> torch.Tensor:
    mask = valid_mask(lengths.to(wav.device), wav.shape[1]).to(wav.dtype)
    level = fraction * (wav * mask).abs().amax(dim=1, keepdim=True)
    return torch.maximum(torch.minimum(wav, level), -level)


class Perturber:
    """One perturbation of padded batches [B, T] (valid lengths [B], the utterances' keys), on wav's device."""

    def __init__(self, perturbation: Perturbation, fold: int, pool: dict[str, torch.Tensor] | None = None,
                 noises: list[torch.Tensor] | None = None):
        self.p, self.fold = perturbation, fold
        self.pool_keys = sorted(pool) if pool else []
        self.pool, self.noises = pool or {}, noises or []
        if self.p.kind == "babble" and len(self.pool_keys) < BABBLE_TALKERS + 1:
            raise TrustSerError(f"babble needs at least {BABBLE_TALKERS + 1} test utterances, the fold has "
                                f"{len(self.pool_keys)}")

    def __call__(self, wav: torch.Tensor, lengths: torch.Tensor, keys: list[str]) -> torch.Tensor:
        kind, value = self.p.kind, self.p.value
        if kind in ADDITIVE:
            noise = self._rows(wav, lengths, keys, self._noise)
            return wav + scale_to_snr(noise, wav, lengths, float(value))
        if kind == "reverb":
            rirs = self._rows(wav, lengths, keys, lambda n, key, g: synthetic_rir(value / 1000, g, wav.device),
                              width=max(int(value / 1000 * TARGET_SR), 1))
            return scale_to_snr(convolve_rir(wav, lengths, rirs), wav, lengths, 0.0)   # back to the clean RMS
        if kind == "telephone":
            return telephone(wav, lengths)
        if kind == "clip":
            return clip(wav, lengths, value / 100)
        return wav * 10 ** (value / 20)

    def _rows(self, wav, lengths, keys, make, width: int | None = None) -> torch.Tensor:
        """[B, width or T]: make(n, key, generator) per utterance, seeded by fold, name and key, zero padded."""
        rows = torch.zeros(wav.shape[0], width or wav.shape[1], device=wav.device)
        for i, (n, key) in enumerate(zip(lengths.tolist(), keys)):
            generator = torch.Generator(device=wav.device).manual_seed(perturbation_seed(self.fold, self.p.name, key))
            row = make(n, key, generator).to(wav.device)
            rows[i, :len(row)] = row
        return rows

    def _noise(self, n: int, key: str, generator: torch.Generator) -> torch.Tensor:
        if self.p.kind in ("white", "pink"):
            white = torch.randn(n, generator=generator, device=generator.device)
            return white if self.p.kind == "white" else pink(white)
        choice = torch.Generator().manual_seed(generator.initial_seed())      # choices and offsets on the CPU
        if self.p.kind == "noise":
            source = self.noises[int(torch.randint(len(self.noises), (1,), generator=choice))]
            return _looped(source, n, int(torch.randint(len(source), (1,), generator=choice)))
        others = [k for k in self.pool_keys if k != key]
        picks = torch.randperm(len(others), generator=choice)[:BABBLE_TALKERS].tolist()
        talkers = [self.pool[others[j]] for j in picks]
        return sum(_unit_rms(_looped(t, n, int(torch.randint(len(t), (1,), generator=choice)))) for t in talkers)


class PerturbedFeatures(FeatureSource):
    """The run's evaluation source (utils/training/pipeline.py evaluation_source) on perturbed waveforms (None:
    clean), with each utterance's measured effect recorded. Its features round as the test split's did, so the
    clean pass gives the finetune stage's test predictions, whatever --finetune trained."""

    def __init__(self, evaluation: FeatureSource, audio: AudioBank, device: torch.device, perturber: Perturber | None):
        self.evaluation, self.audio, self.device, self.perturber = evaluation, audio, device, perturber
        self.snr_db: list[float] = []
        self.level_db: list[float] = []

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        return self.audio.readable(utts)

    def length(self, u: Utterance) -> int:
        return len(self.audio.get(u.path))

    def fetch(self, utts: list[Utterance]):
        wav, lengths = self.audio.device_batch(utts, self.device)
        if self.perturber is not None:
            perturbed = self.perturber(wav, lengths, [u.key for u in utts])
            self.snr_db += measured_snr_db(wav, perturbed - wav, lengths).tolist()
            self.level_db += (-measured_snr_db(wav, perturbed, lengths)).tolist()
            wav = perturbed
        return self.evaluation.fetch_waveforms(wav, lengths)

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.evaluation.finish(fetched, grad)


@dataclass(frozen=True)
class RobustnessSpec:
    perturbations: list[Perturbation]
    batch_size: int = 32
    uar_classes: str = "labels"


def score_fold(backbone, head, evaluation: FeatureSource, test: list[Utterance], audio: AudioBank,
               spec: RobustnessSpec, fold: int, device: torch.device, num_classes: int,
               noises: list[torch.Tensor] | None = None) -> dict:
    """Clean and perturbed test scores of one fold's model (`evaluation`: its evaluation source): per perturbation
    its UAR, the drop from clean (points), the fraction of predictions that changed, and the measured SNR and level
    change (dB, mean/min/max)."""
    labels = np.array([u.label for u in test])

    def run(perturber):
        source = PerturbedFeatures(evaluation, audio, device, perturber)
        result = evaluate(head, backbone, source, test, spec.batch_size, num_classes, spec.uar_classes)
        return result.predictions, source

    clean, _ = run(None)
    clean_scores = classification_scores(labels, clean, num_classes, spec.uar_classes)
    pool = {u.key: audio.get(u.path) for u in test}
    results = {}
    for p in spec.perturbations:
        predictions, source = run(Perturber(p, fold, pool, noises))
        uar = classification_scores(labels, predictions, num_classes, spec.uar_classes)["uar"]
        snr = _finite(source.snr_db)      # an utterance the perturbation left unchanged has no SNR (infinite)
        results[p.name] = {"uar": uar, "uar_drop": clean_scores["uar"] - uar,
                           "changed_fraction": float(np.mean(predictions != clean)),
                           "measured_snr_db": float(snr.mean()) if len(snr) else None,
                           "measured_snr_db_min": float(snr.min()) if len(snr) else None,
                           "measured_snr_db_max": float(snr.max()) if len(snr) else None,
                           "level_change_db": float(_finite(source.level_db).mean())}
        log.info(f"fold {fold}: {p.name}: UAR {uar:.2f}% (clean {clean_scores['uar']:.2f}%), "
                 f"{100 * results[p.name]['changed_fraction']:.1f}% of predictions changed"
                 + (f", measured SNR {snr.mean():.1f} dB" if len(snr) else ""))
    return {"clean": clean_scores, "perturbations": results,
            "mean_uar_drop": float(np.mean([r["uar_drop"] for r in results.values()])), "num_test": len(test)}


def _finite(values: list[float]) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]
