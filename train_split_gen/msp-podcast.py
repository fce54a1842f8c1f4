"""MSP-Podcast: the official split -> <project_dir>/train_split/msp-podcast.json.

Labels/labels_concensus.csv (sic, as distributed; labels_consensus.csv is accepted too), rows in file
order: Split_Set Train -> train, Validation or Development -> dev, Test1 -> test (Test2/Test3 are left
out). Rows whose speaker or gender is unknown, or whose Audios/<file> is missing, are skipped.
"""
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.splits import corpus_and_project_dir, log, read_csv, require_dir, warn_skipped, write_split
from utils.core.errors import TrustSerError, run_main

LABEL_FILES = ("labels_concensus.csv", "labels_consensus.csv")
SPLIT_OF = {"Train": "train", "Validation": "dev", "Development": "dev", "Test1": "test"}
COLUMNS = ["SpkrID", "Gender", "EmoClass", "Split_Set"]


def label_file(root: Path) -> Path:
    for name in LABEL_FILES:
        if (root / "Labels" / name).is_file():
            return root / "Labels" / name
    raise TrustSerError(f"MSP-Podcast folder {root} has no Labels/{LABEL_FILES[0]} (or Labels/{LABEL_FILES[1]}); "
                        f"is data_dir.msp-podcast the MSP-Podcast folder?")


def is_unknown(value: object) -> bool:
    """'Unknown' speakers or genders (the original tests for 'known' in the text), or empty cells."""
    return pd.isna(value) or "known" in value


def read_splits(root: Path) -> dict[str, list]:
    audio = require_dir(root / "Audios", f"MSP-Podcast folder {root} has no Audios folder")
    table = read_csv(label_file(root), "MSP-Podcast label file", COLUMNS)
    splits = {"train": [], "dev": [], "test": []}
    missing, unknown, no_label, other_sets = [], [], [], {}
    # the first column holds the file names (FileName)
    for name, speaker, gender, label, split_set in zip(table[table.columns[0]], *(table[c] for c in COLUMNS)):
        wav = audio / str(name)
        if not wav.is_file():
            missing.append(name)
        elif is_unknown(speaker) or is_unknown(gender):
            unknown.append(name)
        elif pd.isna(label):
            no_label.append(name)
        elif split_set in SPLIT_OF:
            entry = [name, f"msp_podcast_{speaker}", "female" if gender == "Female" else "male", str(wav), label]
            splits[SPLIT_OF[split_set]].append(entry)
        else:
            other_sets[split_set] = other_sets.get(split_set, 0) + 1
    warn_skipped("rows whose Audios/<file> is missing", missing)
    warn_skipped("rows with an unknown speaker or gender", unknown)
    warn_skipped("rows without EmoClass", no_label)
    for split_set, count in other_sets.items():
        log.info("left out %d rows of Split_Set %s", count, split_set)
    if not any(splits.values()):
        raise TrustSerError(f"no usable rows in {label_file(root)} (audio under {audio})")
    return splits


def main() -> None:
    root, project_dir = corpus_and_project_dir("msp-podcast", __doc__.splitlines()[0])
    write_split(project_dir, "msp-podcast", 1, read_splits(root))


if __name__ == "__main__":
    run_main(main)
