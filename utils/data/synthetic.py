"""A small synthetic emotional speech-like corpus, for the offline demo and the tests.

Each utterance is a harmonic source with a jittered F0 contour, syllable-like amplitude envelopes,
a speaker-specific formant envelope and a little noise. The four emotions differ by prosody, and
clearly so on purpose (a randomly initialised backbone must still separate them):

    emotion  level (RMS)  spectral tilt   F0 level / range   syllables/s
    sad      very low     dark (steep)    low, narrow        slow
    neu      low          mid             speaker's own      medium
    hap      high         bright          raised, wide       fast-ish
    ang      very high    very bright     raised, flat-ish   fast

Gender is carried as in real speech: female speakers have about 1.7 times the male base F0 (about 204 vs
120 Hz) and a shorter vocal tract, i.e. formants about 1.17 times higher; speakers vary around both.

Layout: <root>/spk<NN>_<F|M>/spk<NN>_<emotion>_<k>.wav (16-bit PCM) and <root>/speakers.csv.
Speakers alternate F, M, F, ... (24 by default, so half of each gender).

CLI: python -m utils.data.synthetic OUT_DIR [--speakers N] [--utts N] [--seed S] [--sr HZ]
"""
import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.core.io import write_csv, write_wav

EMOTIONS = ["neu", "sad", "ang", "hap"]
MIN_SECONDS, MAX_SECONDS = 1.0, 2.5
N_SPEAKERS, UTTS_PER_EMOTION = 24, 2
MALE_F0, FEMALE_F0_RATIO = 120.0, 1.7           # Hz; adult female/male mean F0 ratio in real speech
MALE_FORMANTS, FEMALE_FORMANT_RATIO = (600.0, 1500.0, 2600.0), 1.17   # Hz; shorter female vocal tract


@dataclass(frozen=True)
class Prosody:
    rms: float          # target RMS of the whole utterance
    tilt: float         # harmonic h has amplitude h ** -tilt
    f0_scale: float     # times the speaker's base F0
    f0_range: float     # relative F0 excursion of the intonation contour
    syllable_rate: float
    noise: float        # aspiration noise, relative to the voiced part


PROSODY = {
    "sad": Prosody(rms=0.012, tilt=2.2, f0_scale=0.85, f0_range=0.04, syllable_rate=2.5, noise=0.03),
    "neu": Prosody(rms=0.035, tilt=1.5, f0_scale=1.00, f0_range=0.10, syllable_rate=3.8, noise=0.05),
    "hap": Prosody(rms=0.090, tilt=0.9, f0_scale=1.30, f0_range=0.30, syllable_rate=4.8, noise=0.08),
    "ang": Prosody(rms=0.220, tilt=0.5, f0_scale=1.40, f0_range=0.12, syllable_rate=5.8, noise=0.15),
}


@dataclass(frozen=True)
class Speaker:
    name: str           # spk01
    gender: str         # F or M
    f0: float           # base F0 in Hz
    formants: tuple     # centre frequencies of three resonances in Hz
    loudness: float     # speaker's level, times each emotion's RMS

    @property
    def folder(self) -> str:
        return f"{self.name}_{self.gender}"


def make_speaker(index: int, seed: int) -> Speaker:
    """Speaker `index` (1-based): odd indices are female, even male."""
    rng = np.random.default_rng([seed, index, 0])
    gender = "F" if index % 2 else "M"
    scale = (FEMALE_F0_RATIO, FEMALE_FORMANT_RATIO) if gender == "F" else (1.0, 1.0)
    f0 = scale[0] * MALE_F0 * rng.normal(1.0, 0.07)
    formants = tuple(scale[1] * rng.uniform(0.95, 1.05) * f for f in MALE_FORMANTS)
    return Speaker(f"spk{index:02d}", gender, float(f0), formants, float(rng.uniform(0.85, 1.15)))


def _syllable_envelope(n: int, sr: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Raised-sine bumps of random length and accent, separated by short gaps and edge silences."""
    env = np.zeros(n)
    t = int(rng.uniform(0.05, 0.15) * sr)
    end = n - int(0.08 * sr)
    while t < end:
        length = min(int(rng.uniform(0.6, 1.0) * sr / rate), end - t)
        if length > 8:
            env[t:t + length] = rng.uniform(0.6, 1.0) * np.sin(np.linspace(0, np.pi, length)) ** 0.6
        t += length + int(rng.uniform(0.05, 0.35) * sr / rate)
    return env


def _f0_contour(n: int, sr: int, speaker: Speaker, p: Prosody, rng: np.random.Generator) -> np.ndarray:
    """Intonation (slow random wave plus declination) with per-sample jitter, in Hz."""
    t = np.arange(n) / sr
    wave = sum(rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(0.3, 0.6) * p.syllable_rate * t
                                                + rng.uniform(0, 2 * np.pi)) for _ in range(3)) / 2.0
    declination = 0.05 * (0.5 - t / t[-1])
    jitter = np.convolve(rng.normal(0, 0.01, n), np.ones(64) / 8.0, mode="same")
    return speaker.f0 * p.f0_scale * (1 + p.f0_range * wave + declination + jitter)


def _harmonic_source(f0: np.ndarray, sr: int, tilt: float, rng: np.random.Generator) -> np.ndarray:
    """Sum of harmonics with amplitude h**-tilt, random fixed phases, none above 0.45*sr."""
    phase = np.exp(1j * 2 * np.pi * np.cumsum(f0) / sr)
    n_harmonics = int(0.45 * sr / f0.max())
    out = np.zeros(len(f0))
    harmonic = np.ones(len(f0), dtype=complex)
    for h in range(1, n_harmonics + 1):
        harmonic *= phase
        out += h ** -tilt * (harmonic * np.exp(1j * rng.uniform(0, 2 * np.pi))).imag
    return out


def _formant_filter(signal: np.ndarray, sr: int, formants: tuple) -> np.ndarray:
    """Boost three resonances of the speaker's vocal tract (zero-phase, in the frequency domain)."""
    spectrum = np.fft.rfft(signal)
    freqs = np.fft.rfftfreq(len(signal), 1 / sr)
    gain = 0.3 + sum(np.exp(-0.5 * ((freqs - f) / (0.12 * f)) ** 2) for f in formants)
    return np.fft.irfft(spectrum * gain, n=len(signal))


def synthesize(speaker: Speaker, emotion: str, k: int, seed: int, sr: int = 16000) -> np.ndarray:
    """One utterance (float32 in [-1, 1]), fully determined by (seed, speaker, emotion, k)."""
    p = PROSODY[emotion]
    rng = np.random.default_rng([seed, int(speaker.name[3:]), EMOTIONS.index(emotion) + 1, k])
    n = int(rng.uniform(MIN_SECONDS, MAX_SECONDS) * sr)
    envelope = _syllable_envelope(n, sr, p.syllable_rate, rng)
    voiced = _formant_filter(_harmonic_source(_f0_contour(n, sr, speaker, p, rng), sr, p.tilt, rng), sr,
                             speaker.formants)
    voiced /= np.sqrt(np.mean(voiced ** 2))
    signal = envelope * (voiced + p.noise * rng.normal(0, 1, n)) + 0.002 * rng.normal(0, 1, n)
    signal *= p.rms * speaker.loudness / np.sqrt(np.mean(signal ** 2))
    peak = np.abs(signal).max()
    if peak > 0.99:
        signal *= 0.99 / peak
    return signal.astype(np.float32)


def make_corpus(root: Path, n_speakers: int = N_SPEAKERS, utts_per_emotion: int = UTTS_PER_EMOTION,
                seed: int = 0, sr: int = 16000) -> Path:
    """Write the corpus under root (files already there are overwritten) and return root."""
    root = Path(root)
    speakers = [make_speaker(i, seed) for i in range(1, n_speakers + 1)]
    for speaker in speakers:
        for emotion in EMOTIONS:
            for k in range(1, utts_per_emotion + 1):
                path = root / speaker.folder / f"{speaker.name}_{emotion}_{k}.wav"
                write_wav(path, synthesize(speaker, emotion, k, seed, sr), sr, subtype="PCM_16")
    write_csv(root / "speakers.csv", [["speaker", "gender"], *([s.name, s.gender] for s in speakers)])
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic emotional speech corpus.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--speakers", type=int, default=N_SPEAKERS)
    parser.add_argument("--utts", type=int, default=UTTS_PER_EMOTION, help="utterances per speaker and emotion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sr", type=int, default=16000, help="sample rate of the written files")
    args = parser.parse_args()
    make_corpus(args.out_dir, args.speakers, args.utts, args.seed, args.sr)
    print(f"wrote {args.speakers * len(EMOTIONS) * args.utts} files to {args.out_dir}")


if __name__ == "__main__":
    main()
