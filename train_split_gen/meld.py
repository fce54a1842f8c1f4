"""MELD: the official split -> <project_dir>/train_split/meld.json.

{train,dev,test}_sent_emo.csv label the utterances; the audio is expected as extracted wav files in
train_splits/waves/, dev_splits_complete/waves/ and output_repeated_splits_test/waves/ (dia<D>_utt<U>.wav,
converted from MELD.Raw's mp4 files). Within each split, entries are grouped by speaker in sorted speaker
order, each speaker's rows in file order (the original's pandas groupby); rows without audio are skipped.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.splits import SPLITS, corpus_and_project_dir, read_csv, require_dir, warn_skipped, write_split
from utils.core.errors import run_main

AUDIO_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
COLUMNS = ["Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"]


def read_split(root: Path, split: str) -> list[list]:
    waves = require_dir(root / AUDIO_FOLDERS[split] / "waves",
                        f"MELD folder {root} has no {AUDIO_FOLDERS[split]}/waves folder (the {split} audio as "
                        f"wav files extracted from the mp4s; is data_dir.meld the MELD.Raw folder?)")
    table = read_csv(root / f"{split}_sent_emo.csv", "MELD label file", COLUMNS)
    by_speaker: dict[str, list] = {}
    missing, no_speaker = [], []
    for speaker, label, dialog, utterance in zip(*(table[c] for c in COLUMNS)):
        key = f"dia{dialog}_utt{utterance}"
        wav = waves / f"{key}.wav"
        if not wav.is_file():
            missing.append(key)
        elif pd.isna(speaker):
            no_speaker.append(key)
        else:
            by_speaker.setdefault(speaker, []).append([key, f"meld_{speaker}", "", str(wav), label])
    warn_skipped(f"{split} rows without {AUDIO_FOLDERS[split]}/waves/<key>.wav", missing)
    warn_skipped(f"{split} rows without a speaker", no_speaker)
    return [entry for speaker in sorted(by_speaker) for entry in by_speaker[speaker]]


def main() -> None:
    root, project_dir = corpus_and_project_dir("meld", __doc__.splitlines()[0])
    write_split(project_dir, "meld", 1, {split: read_split(root, split) for split in SPLITS})


if __name__ == "__main__":
    run_main(main)
