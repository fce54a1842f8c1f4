"""utils/data/audio.py: error cases of read_audio, resampling to 16 kHz mono, atomic writes, load_utterance."""
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.io import write_wav  # noqa: E402
from utils.data.audio import BadAudioError, load_utterance, read_audio, to_16k_mono  # noqa: E402
from utils.core.errors import TrustSerError  # noqa: E402


def sine(freq: float, sr: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def dominant_frequency(signal: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / sr)[np.argmax(spectrum)])


def assert_bad(path: Path, reason: str) -> None:
    with pytest.raises(BadAudioError) as info:
        read_audio(path)
    message = str(info.value)
    assert str(path) in message and reason in message and "\n" not in message
    assert isinstance(info.value, TrustSerError)


def test_read_audio_shape_and_rate(tmp_path):
    stereo = np.stack([sine(440, 22050, 0.5), sine(880, 22050, 0.5, 0.25)], axis=1)
    sf.write(tmp_path / "a.wav", stereo, 22050, subtype="FLOAT")
    audio, sr = read_audio(tmp_path / "a.wav")
    assert sr == 22050 and audio.dtype == np.float32 and audio.shape == (2, 11025)
    np.testing.assert_array_equal(audio, stereo.T)


def test_read_audio_missing(tmp_path):
    assert_bad(tmp_path / "nope.wav", "not found")


def test_read_audio_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert_bad(path, "not a readable audio file")


def test_read_audio_zero_length_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert_bad(path, "not a readable audio file")


def test_read_audio_truncated_header(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(440, 16000, 0.1), 16000)
    path.write_bytes(path.read_bytes()[:20])
    assert_bad(path, "not a readable audio file")


def test_read_audio_header_without_samples(tmp_path):
    path = tmp_path / "nosamples.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    assert_bad(path, "no samples")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_read_audio_non_finite_samples(tmp_path, value):
    path = tmp_path / "nan.wav"
    audio = sine(440, 16000, 0.1)
    audio[100] = value
    sf.write(path, audio, 16000, subtype="FLOAT")
    assert_bad(path, "NaN or infinite")


@pytest.mark.parametrize("sr, freq", [(44100, 1000.0), (8000, 440.0), (22050, 3000.0)])
def test_to_16k_mono_stereo_rate_and_frequency(sr, freq):
    stereo = np.stack([sine(freq, sr, 1.0, 0.6), sine(freq, sr, 1.0, 0.2)])
    out = to_16k_mono(stereo, sr)
    assert out.ndim == 1 and out.dtype == np.float32
    assert len(out) == int(np.ceil(stereo.shape[1] * 16000 / sr))
    assert abs(dominant_frequency(out, 16000) - freq) <= 1.0
    # the mean of the channels: amplitude (0.6 + 0.2) / 2, away from the filter's edge effects
    middle = out[2000:-2000]
    assert np.sqrt(2 * np.mean(middle ** 2)) == pytest.approx(0.4, rel=0.01)


def test_to_16k_mono_passthrough():
    audio = sine(440, 16000, 0.2)
    np.testing.assert_array_equal(to_16k_mono(audio[None], 16000), audio)


def test_to_16k_mono_downsampling_removes_content_above_8k():
    out = to_16k_mono(sine(10000, 44100, 0.5)[None], 44100)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 0.01 * 0.5


def test_write_wav_roundtrip_is_exact_and_leaves_no_temp_files(tmp_path):
    audio = sine(440, 16000, 0.3) * 1.5  # resampler overshoot above 1.0 must survive
    path = tmp_path / "sub" / "out.wav"
    write_wav(path, audio, 16000)
    read, sr = read_audio(path)
    assert sr == 16000 and sf.info(str(path)).subtype == "FLOAT"
    np.testing.assert_array_equal(read[0], audio)
    assert [p.name for p in path.parent.iterdir()] == ["out.wav"]


def test_write_wav_pcm16(tmp_path):
    write_wav(tmp_path / "p.wav", sine(440, 22050, 0.2), 22050, subtype="PCM_16")
    info = sf.info(str(tmp_path / "p.wav"))
    assert (info.samplerate, info.subtype, info.frames) == (22050, "PCM_16", 4410)


def test_load_utterance_crops_from_start(tmp_path):
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * 16000).astype(np.float32)
    write_wav(tmp_path / "long.wav", audio, 16000)
    out = load_utterance(tmp_path / "long.wav", max_seconds=2)
    assert out.dtype.is_floating_point and out.ndim == 1 and len(out) == 32000
    np.testing.assert_array_equal(out.numpy(), audio[:32000])
    assert len(load_utterance(tmp_path / "long.wav", max_seconds=6)) == 48000  # no padding
    assert len(load_utterance(tmp_path / "long.wav", max_seconds=0.5)) == 8000


def test_load_utterance_refuses_wrong_rate_and_stereo(tmp_path):
    sf.write(tmp_path / "r.wav", sine(440, 22050, 0.2), 22050)
    with pytest.raises(BadAudioError, match="22050 Hz.*preprocess_audio/preprocess_audio.py"):
        load_utterance(tmp_path / "r.wav", 6)
    sf.write(tmp_path / "s.wav", np.zeros((3200, 2), dtype=np.float32), 16000)
    with pytest.raises(BadAudioError, match="2 channels.*not preprocessed"):
        load_utterance(tmp_path / "s.wav", 6)


def test_load_utterance_bad_samples(tmp_path):
    audio = sine(440, 16000, 0.5)
    audio[10] = np.nan
    write_wav(tmp_path / "n.wav", audio, 16000)
    with pytest.raises(BadAudioError, match="NaN"):
        load_utterance(tmp_path / "n.wav", 6)
    with pytest.raises(BadAudioError, match="not found"):
        load_utterance(tmp_path / "missing.wav", 6)
