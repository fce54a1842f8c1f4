"""The synthetic corpus (utils/data/synthetic.py) written as a manifest CSV, some files as 44.1 kHz stereo FLAC."""
import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio


def write_manifest_corpus(root: Path, n_speakers: int = 6, utts_per_emotion: int = 2, split: bool = False,
                          gender: bool = True) -> Path:
    """root/corpus/... audio and root/manifest.csv with paths relative to it; returns the manifest."""
    from utils.data.audio import read_audio
    from utils.data.synthetic import make_corpus
    corpus = make_corpus(root / "corpus", n_speakers=n_speakers, utts_per_emotion=utts_per_emotion, sr=22050)
    genders = dict(line.split(",") for line in (corpus / "speakers.csv").read_text().split()[1:])
    rows = []
    for i, wav in enumerate(sorted(corpus.rglob("*.wav"))):
        path = wav
        if i % 3 == 0:  # every third file as 44.1 kHz stereo FLAC, the two channels slightly different
            audio, sr = read_audio(wav)
            mono = torchaudio.functional.resample(torch.from_numpy(audio.mean(axis=0)).float(), sr, 44100).numpy()
            path = wav.with_suffix(".flac")
            sf.write(path, np.stack([mono, 0.9 * mono], axis=1), 44100)
            wav.unlink()
        speaker, emotion, _ = path.stem.split("_")
        row = {"path": str(path.relative_to(root)), "label": emotion, "speaker": speaker}
        if gender:
            row["gender"] = genders[speaker]
        if split:
            number = int(speaker[3:])
            row["split"] = "test" if number == n_speakers else "dev" if number == n_speakers - 1 else "train"
        rows.append(row)
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
