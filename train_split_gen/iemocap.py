"""IEMOCAP: five leave-one-session-out folds -> <project_dir>/train_split/iemocap_fold{1..5}.json.

Fold k tests Session k; the last of the remaining sessions is dev (Session5, or Session4 in fold 5).
Labels are the raw codes of SessionN/dialog/EmoEvaluation/*.txt (neu, ang, exc, xxx, ...).
"""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.splits import (Item, corpus_and_project_dir, is_hidden, kfold, last_one, read_text,
                                    require_dir, warn_skipped, write_folds)
from utils.core.errors import TrustSerError, run_main

SESSIONS = [f"Session{i}" for i in range(1, 6)]
# As the original: a line from its first '[' to a ']' just before the newline, e.g.
# "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"
LABEL_LINE = re.compile(r"\[.+\]\n")


def label_files(root: Path, session: str) -> list[Path]:
    """The session's EmoEvaluation/*.txt in file-system order (the original's glob order)."""
    folder = root / session / "dialog" / "EmoEvaluation"
    require_dir(folder, f"IEMOCAP folder {root} has no {session}/dialog/EmoEvaluation "
                        f"(is data_dir.iemocap the IEMOCAP_full_release folder?)")
    require_dir(root / session / "sentences" / "wav",
                f"IEMOCAP folder {root} has no {session}/sentences/wav audio folder")
    files = list(folder.glob("*.txt"))
    warn_skipped("hidden files in " + str(folder), [p.name for p in files if is_hidden(p)])
    return [p for p in files if not is_hidden(p)]


def utterance_entry(root: Path, session: str, line: str, path: Path) -> list:
    fields = line.split("\t")
    if len(fields) < 4:
        raise TrustSerError(f"IEMOCAP label file {path}: line '{line.strip()}' is not "
                            f"'[start - end]<TAB>utterance<TAB>label<TAB>[V, A, D]'")
    utterance, label = fields[-3], fields[-2]
    gender = utterance.split("_")[-1][0]
    speaker = "iemocap_" + utterance.split("_")[0][:-1] + gender
    dialog = "_".join(utterance.split("_")[:-1])
    wav = root / session / "sentences" / "wav" / dialog / f"{utterance}.wav"
    return [utterance, speaker, "female" if gender == "F" else "male", str(wav), label]


def read_corpus(root: Path) -> list[Item]:
    """(session, entry) for every labelled utterance, in session, file and line order."""
    items = []
    for session in SESSIONS:
        for path in label_files(root, session):
            for line in LABEL_LINE.findall(read_text(path, "IEMOCAP label file")):
                if "Ses" in line:
                    items.append((session, utterance_entry(root, session, line, path)))
    return items


def main() -> None:
    root, project_dir = corpus_and_project_dir("iemocap", __doc__.splitlines()[0])
    write_folds(project_dir, "iemocap", read_corpus(root), kfold(SESSIONS, 5, last_one))


if __name__ == "__main__":
    run_main(main)
