"""Whisper's log-mel front end in torch: differentiable, runs on the input's device.

Numerically the same as transformers' WhisperFeatureExtractor called with max_length = the clip's own length
(what the original did), so no 30 s padding: a clip of N samples gives N // 160 frames.
"""
import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    log_step = 27.0 / np.log(6.4)
    mels = 3.0 * freq / 200.0
    above = freq >= 1000.0
    return np.where(above, 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) * log_step, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    log_step = np.log(6.4) / 27.0
    freq = 200.0 * mels / 3.0
    above = mels >= 15.0
    return np.where(above, 1000.0 * np.exp(log_step * (mels - 15.0)), freq)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Slaney-normalised triangular mel filters, [n_fft // 2 + 1, n_mels] float32 (as Whisper / librosa)."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    edges = _mel_to_hz(mel_points)
    widths = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= 2.0 / (edges[2:] - edges[:-2])
    return torch.from_numpy(filters.astype(np.float32))


def num_mel_frames(num_samples: torch.Tensor) -> torch.Tensor:
    """Mel frames for clips of these sample counts (centred STFT, last frame dropped as Whisper does)."""
    return torch.div(num_samples, HOP_LENGTH, rounding_mode="floor")


class WhisperLogMel(nn.Module):
    """wav [N] -> normalised log-mel [80, N // 160], one clip at a time (the clamp uses the clip's own maximum)."""

    def __init__(self, n_mels: int = N_MELS):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)
        self.register_buffer("filters", mel_filters(n_mels), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 1 or wav.shape[0] <= N_FFT // 2:
            raise ValueError(f"WhisperLogMel takes one clip longer than {N_FFT // 2} samples, got shape {tuple(wav.shape)}")
        with torch.autocast(wav.device.type, enabled=False):    # the front end stays fp32 under bf16 autocast
            stft = torch.stft(wav.float(), N_FFT, HOP_LENGTH, window=self.window, center=True, pad_mode="reflect",
                              return_complex=True)
            power = stft[:, :-1].abs() ** 2
            log_spec = torch.clamp(self.filters.T @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def batch(self, wav: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch [B, T] -> log-mels [B, 80, M] computed clip by clip (zero beyond each clip), mel frame counts."""
        mels = [self(wav[i, :n]) for i, n in enumerate(lengths)]
        width = max(m.shape[1] for m in mels)
        padded = torch.stack([nn.functional.pad(m, (0, width - m.shape[1])) for m in mels])
        counts = torch.tensor([m.shape[1] for m in mels], device=wav.device)
        return padded, counts

