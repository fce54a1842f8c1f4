"""RAVDESS: five actor folds -> <project_dir>/train_split/ravdess_fold{1..5}.json.

Files Actor_XX/03-01-EE-II-SS-RR-AA.wav: label = emotion code EE (int), gender from actor AA
(odd = male, even = female, as the corpus documents). KFold (no shuffle) over actors 1..n, where n is
the number of Actor_XX folders; the last ceil(n/5) training actors are dev.
"""
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.splits import Item, corpus_and_project_dir, kfold, last_fifth, log, warn_skipped, write_folds
from utils.core.errors import TrustSerError, run_main

ACTOR_FOLDER = re.compile(r"Actor_(\d+)")
FILE_NAME = re.compile(r"\d+(-\d+){6}\.wav")   # modality-channel-emotion-intensity-statement-repetition-actor


def actor_folders(root: Path) -> list[tuple[int, str]]:
    """(actor number, folder name) in file-system order (the original's os.listdir order);
    anything else beside the Actor_XX folders (.DS_Store, the zip files) is ignored."""
    names = os.listdir(root)
    actors = [(int(m.group(1)), name) for name in names
              if (m := ACTOR_FOLDER.fullmatch(name)) and (root / name).is_dir()]
    if not actors:
        raise TrustSerError(f"RAVDESS folder {root} has no Actor_XX folders "
                            f"(is data_dir.ravdess the folder holding Actor_01 ... Actor_24?)")
    if len(actors) < 5:
        raise TrustSerError(f"RAVDESS folder {root} has {len(actors)} Actor_XX folders; 5 folds need at least 5")
    ignored = sorted(set(names) - {name for _, name in actors})
    if ignored:
        log.info("ignored %d entries beside the Actor_XX folders: %s", len(ignored), ", ".join(ignored))
    return actors


def actor_files(root: Path, folder: str) -> list[str]:
    """The actor's RAVDESS-named wav files in file-system order; other files are skipped with a warning."""
    names = os.listdir(root / folder)
    warn_skipped(f"files in {root / folder} not named NN-NN-NN-NN-NN-NN-NN.wav",
                 [n for n in names if not FILE_NAME.fullmatch(n)])
    return [n for n in names if FILE_NAME.fullmatch(n)]


def file_entry(root: Path, folder: str, name: str) -> list:
    fields = name[:-len(".wav")].split("-")
    gender = "male" if int(fields[6]) % 2 else "female"
    return [name, f"ravdess_{folder}", gender, str(root / folder / name), int(fields[2])]


def read_corpus(root: Path, actors: list[tuple[int, str]]) -> list[Item]:
    return [(actor, file_entry(root, folder, name)) for actor, folder in actors for name in actor_files(root, folder)]


def actor_numbers(actors: list[tuple[int, str]]) -> list[int]:
    """As the original: fold position i is actor i+1, whatever folders exist (warned when they differ)."""
    numbers = list(range(1, len(actors) + 1))
    if sorted(a for a, _ in actors) != numbers:
        log.warning("actor folders are not Actor_01 ... Actor_%02d; folds are still made over actors 1..%d "
                    "as in the original, and other actors always go to train", len(actors), len(actors))
    return numbers


def main() -> None:
    root, project_dir = corpus_and_project_dir("ravdess", __doc__.splitlines()[0])
    actors = actor_folders(root)
    write_folds(project_dir, "ravdess", read_corpus(root, actors), kfold(actor_numbers(actors), 5, last_fifth))


if __name__ == "__main__":
    run_main(main)
