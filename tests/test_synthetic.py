"""utils/data/synthetic.py (the built-in corpus) and train_split_gen/demo.py (its splits)."""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from synthetic_project import load_script  # noqa: E402
from utils.core.errors import TrustSerError  # noqa: E402
from utils.core.io import read_json  # noqa: E402
from utils.data.synthetic import EMOTIONS, make_corpus, make_speaker  # noqa: E402

SPLIT_SCRIPT = REPO / "train_split_gen" / "demo.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "demo"
    start = time.perf_counter()
    make_corpus(root)
    return root, time.perf_counter() - start


def features(path: Path) -> tuple[float, float]:
    """log RMS energy and spectral centroid (Hz)."""
    audio, sr = sf.read(path)
    spectrum = np.abs(np.fft.rfft(audio))
    centroid = (spectrum * np.fft.rfftfreq(len(audio), 1 / sr)).sum() / spectrum.sum()
    return float(np.log(np.sqrt(np.mean(audio ** 2)))), float(centroid)


def f0_estimate(path: Path) -> float:
    """Autocorrelation pitch of the middle 0.2 s, searched in 60..500 Hz."""
    audio, sr = sf.read(path)
    middle = audio[len(audio) // 2 - 1600: len(audio) // 2 + 1600]
    corr = np.correlate(middle, middle, "full")[len(middle) - 1:]
    low, high = sr // 500, sr // 60
    return sr / (low + int(np.argmax(corr[low:high])))


def leave_one_speaker_out_accuracy(x: np.ndarray, labels: np.ndarray, speakers: np.ndarray,
                                   n_classes: int = len(EMOTIONS)) -> float:
    """Nearest class centroid on z-scored features, trained on the other speakers."""
    correct = 0
    for speaker in np.unique(speakers):
        train = speakers != speaker
        z = (x - x[train].mean(0)) / x[train].std(0)
        centroids = np.stack([z[train & (labels == c)].mean(0) for c in range(n_classes)])
        predicted = np.argmin(((z[~train][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
        correct += int((predicted == labels[~train]).sum())
    return correct / len(labels)


@pytest.mark.slow
def test_layout_balance_size_and_speed(corpus):
    root, seconds = corpus
    files = sorted(root.glob("*/*.wav"))
    assert len(files) == 24 * 4 * 2
    assert (root / "speakers.csv").read_text().splitlines()[:3] == ["speaker,gender", "spk01,F", "spk02,M"]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == [f"spk{i:02d}_{'F' if i % 2 else 'M'}" for i in range(1, 25)]
    assert sum(p.name.endswith("_F") for p in root.iterdir()) == 12
    for emotion in EMOTIONS:
        assert len(list(root.glob(f"spk03_F/spk03_{emotion}_*.wav"))) == 2
    assert sum(p.stat().st_size for p in files) < 12 * 2 ** 20
    durations = [sf.info(str(p)).duration for p in files]
    assert 1.0 <= min(durations) and max(durations) <= 3.0 and np.std(durations) > 0.2
    assert {(i.samplerate, i.channels, i.subtype) for i in map(sf.info, map(str, files))} == {(16000, 1, "PCM_16")}
    assert seconds < 15, f"generation took {seconds:.1f} s"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_corpus(tmp_path / "a", n_speakers=2, utts_per_emotion=1, seed=3)
    b = make_corpus(tmp_path / "b", n_speakers=2, utts_per_emotion=1, seed=3)
    c = make_corpus(tmp_path / "c", n_speakers=2, utts_per_emotion=1, seed=4)
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert len(names) == 2 * 4 + 1
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert all((a / n).read_bytes() != (c / n).read_bytes() for n in names if n.endswith(".wav"))


def test_other_sample_rate(tmp_path):
    root = make_corpus(tmp_path, n_speakers=1, utts_per_emotion=1, sr=22050)
    assert {sf.info(str(p)).samplerate for p in root.glob("*/*.wav")} == {22050}


@pytest.mark.slow
def test_female_speakers_have_about_1_7_times_the_male_pitch(corpus):
    root, _ = corpus
    f0 = {g: np.median([f0_estimate(p) for p in root.glob(f"*_{g}/*_neu_*.wav")]) for g in "FM"}
    assert 185 < f0["F"] < 225 and 105 < f0["M"] < 135
    assert 1.55 < f0["F"] / f0["M"] < 1.85


@pytest.mark.slow
def test_female_formants_are_higher_and_gender_is_told_apart_across_speakers(corpus):
    speakers = [make_speaker(i, seed=0) for i in range(1, 25)]
    formants = {g: np.mean([s.formants for s in speakers if s.gender == g], axis=0) for g in "FM"}
    np.testing.assert_allclose(formants["F"] / formants["M"], 1.17, rtol=0.04)
    root, _ = corpus
    for emotion in EMOTIONS:      # emotions move F0 too (sad lower, angry higher): gender is told apart within each
        files = sorted(root.glob(f"*/*_{emotion}_*.wav"))
        x = np.array([[np.log(f0_estimate(p))] for p in files])
        gender = np.array([int(p.parent.name.endswith("_M")) for p in files])
        groups = np.array([p.parent.name for p in files])
        assert leave_one_speaker_out_accuracy(x, gender, groups, n_classes=2) > 0.9, emotion


def run_split(config: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SPLIT_SCRIPT), "--config", str(config), *flags],
                          cwd=config.parent, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_split_script_generates_and_splits_by_speaker(tmp_path, corpus):
    config = tmp_path / "config.yml"
    config.write_text("data_dir:\n  demo: data\nproject_dir: out\n")
    result = run_split(config, "--generate")
    assert result.returncode == 0, result.stderr
    assert "generating the synthetic corpus" in result.stderr
    assert "fold 5: train 128 files (16 speakers), dev 32 files (4 speakers), test 32 files (4 speakers)" in result.stderr
    generated = tmp_path / "data" / "spk07_F" / "spk07_hap_2.wav"
    assert generated.read_bytes() == (corpus[0] / "spk07_F" / "spk07_hap_2.wav").read_bytes()

    all_test = []
    for fold in range(1, 6):
        split = read_json(tmp_path / "out" / "train_split" / f"demo_fold{fold}.json")
        speakers = {name: sorted({e[1] for e in split[name]}) for name in ("train", "dev", "test")}
        assert speakers["test"] == [f"demo_spk{i:02d}" for i in range(5 * fold - 4, min(5 * fold, 24) + 1)]
        train_and_dev = [f"demo_spk{i:02d}" for i in range(1, 25) if f"demo_spk{i:02d}" not in speakers["test"]]
        assert speakers["train"] == train_and_dev[:-4] and speakers["dev"] == train_and_dev[-4:]
        for entry in split["train"] + split["dev"] + split["test"]:
            key, speaker, gender, path, label = entry
            assert Path(path).is_file() and Path(path).stem == key and label in EMOTIONS
            assert gender == ("F" if int(speaker[-2:]) % 2 else "M")
        all_test += [e[0] for e in split["test"]]
    assert len(all_test) == len(set(all_test)) == 192

    again = run_split(config, "--generate")
    assert again.returncode == 0 and "generating" not in again.stderr


def test_split_script_rejects_a_folder_that_is_not_the_corpus(tmp_path):
    script = load_script(SPLIT_SCRIPT)
    with pytest.raises(TrustSerError, match="speakers.csv not found.*--generate"):
        script.read_speakers(tmp_path)
    (tmp_path / "speakers.csv").write_text("speaker,gender\nspk01,F\n")
    (tmp_path / "spk01_F").mkdir()
    (tmp_path / "spk01_F" / "spk01_bored_1.wav").write_bytes(b"")
    with pytest.raises(TrustSerError, match="emotion in"):
        script.speaker_entries(tmp_path, "spk01", "F")


def test_dev_is_last_fifth_of_training_speakers():
    script = load_script(SPLIT_SCRIPT)
    folds = script.fold_speakers(list(range(1, 13)), 5)
    assert folds[0] == ([4, 5, 6, 7, 8, 9, 10], [11, 12], [1, 2, 3])
    assert folds[4] == ([1, 2, 3, 4, 5, 6, 7, 8], [9, 10], [11, 12])
