"""Audio I/O: read any corpus file, make it 16 kHz mono, load it for a model (utils/core/io.py writes WAV).

Preprocessed files are written as 32-bit float WAV (as the original's torchaudio.save did for float
tensors): no quantisation and no clipping of resampler overshoot.
"""
import re
from pathlib import Path

import numpy as np
import torch

from utils.core.errors import TrustSerError

TARGET_SR = 16000
_NOT_PREPROCESSED = "the audio is not preprocessed; run preprocess_audio/preprocess_audio.py for this corpus"


class BadAudioError(TrustSerError):
    """An audio file that is missing, unreadable, empty or holds non-finite samples."""


def _open(path: Path):
    import soundfile as sf      # imported here so that code which reads no audio runs without libsndfile
    if not path.is_file():
        raise BadAudioError(f"{path}: audio file not found")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as err:
        detail = getattr(err, "error_string", None) or str(err)
        raise BadAudioError(f"{path}: not a readable audio file ({detail.splitlines()[0].strip()})") from None
    _check_not_truncated(path, handle)
    return handle


def _check_not_truncated(path: Path, handle) -> None:
    """libsndfile reads a WAV cut off inside its data chunk silently; its header report says 'data : N (should be M)'."""
    cut = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", handle.extra_info, re.MULTILINE)
    if cut and int(cut.group(2)) < int(cut.group(1)) and int(cut.group(1)) != 0xFFFFFFFF:
        handle.close()
        raise BadAudioError(f"{path}: audio file is truncated (data chunk declares {cut.group(1)} bytes, "
                            f"only {cut.group(2)} present)")


def _read_frames(path: Path, handle, frames: int) -> np.ndarray:
    """[channels, samples] float32, checked for emptiness and non-finite values."""
    import soundfile as sf
    try:
        data = handle.read(frames, dtype="float32", always_2d=True).T
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as err:
        raise BadAudioError(f"{path}: audio data is damaged ({str(err).splitlines()[0]})") from None
    if data.shape[1] == 0:
        raise BadAudioError(f"{path}: audio file has no samples")
    if not np.isfinite(data).all():
        raise BadAudioError(f"{path}: audio holds NaN or infinite samples")
    return np.ascontiguousarray(data)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The whole file as float32 [channels, samples] and its sample rate."""
    path = Path(path)
    with _open(path) as handle:
        return _read_frames(path, handle, -1), handle.samplerate


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(sample rate, channels, frames) from the header; BadAudioError when it cannot be read."""
    path = Path(path)
    with _open(path) as handle:
        return handle.samplerate, handle.channels, handle.frames


def to_16k_mono(audio: np.ndarray, sr: int) -> np.ndarray:
    """Average the channels of [channels, samples] (or take 1-D as is) and resample to 16 kHz.

    Uses torchaudio's windowed-sinc resampler with its defaults, the same filter as the original's
    torchaudio.transforms.Resample; the output has ceil(samples * 16000 / sr) samples.
    """
    audio = np.asarray(audio, dtype=np.float32)
    mono = audio.mean(axis=0) if audio.ndim == 2 else audio
    if sr == TARGET_SR:
        return np.ascontiguousarray(mono)
    import torchaudio.functional    # here: code that resamples nothing (the GPU check) runs without torchaudio
    resampled = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(mono)), sr, TARGET_SR)
    return resampled.numpy().astype(np.float32, copy=False)


def load_utterance(path: str | Path, max_seconds: float, sr: int = TARGET_SR) -> torch.Tensor:
    """A preprocessed (16 kHz mono) file as a 1-D float32 tensor, cropped to its first max_seconds."""
    path = Path(path)
    with _open(path) as handle:
        if handle.samplerate != sr:
            raise BadAudioError(f"{path}: sample rate is {handle.samplerate} Hz, not {sr} Hz: {_NOT_PREPROCESSED}")
        if handle.channels != 1:
            raise BadAudioError(f"{path}: has {handle.channels} channels, not 1: {_NOT_PREPROCESSED}")
        data = _read_frames(path, handle, int(max_seconds * sr))
    return torch.from_numpy(data[0])
