"""MSP-IMPROV: six leave-one-session-out folds -> <project_dir>/train_split/msp-improv_fold{1..6}.json.

Labels come from Evalution.txt (sic, as distributed): the first letter after the first '; ' of each
'UTD-IMPROV-....avi; X; ...' line. Fold k tests session k; the last remaining session is dev.
All recording types (R, S, T, P) are kept, as in the original.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.splits import Item, corpus_and_project_dir, kfold, last_one, read_text, require_dir, write_folds
from utils.core.errors import TrustSerError, run_main

SESSIONS = list(range(1, 7))


def read_labels(root: Path) -> dict[str, str]:
    """MSP-IMPROV-<...> utterance name -> label letter; a later line for the same name wins, as in the original."""
    path = root / "Evalution.txt"
    labels = {}
    for number, line in enumerate(read_text(path, "MSP-IMPROV label file").split("\n"), start=1):
        if "UTD-" not in line:
            continue
        if ".avi" not in line or "; " not in line:
            raise TrustSerError(f"MSP-IMPROV label file {path} line {number}: expected 'UTD-....avi; <label>; ...'")
        labels["MSP-" + line.split(".avi")[0][4:]] = line.split("; ")[1][0]
    return labels


def utterance_entry(root: Path, name: str, label: str) -> Item:
    """MSP-IMPROV-S01A-F01-P-FM01 -> Audio/session1/S01A/P/MSP-IMPROV-S01A-F01-P-FM01.wav, speaker F01."""
    parts = name.split("-")
    speaker = parts[-3] if len(parts) >= 5 else ""
    if not speaker[1:].isdigit():
        raise TrustSerError(f"MSP-IMPROV label file {root / 'Evalution.txt'}: cannot read the speaker of '{name}'")
    session = int(speaker[1:])
    wav = root / "Audio" / f"session{session}" / parts[2] / parts[-2][-1:] / f"{name}.wav"
    return session, [name, f"msp_improv_{speaker}", "female" if speaker[0] == "F" else "male", str(wav), label]


def read_corpus(root: Path) -> list[Item]:
    """(session, entry) for every labelled utterance, sorted by name."""
    require_dir(root / "Audio", f"MSP-IMPROV folder {root} has no Audio folder "
                                f"(is data_dir.msp-improv the folder holding Evalution.txt and Audio/?)")
    labels = read_labels(root)
    return [utterance_entry(root, name, labels[name]) for name in sorted(labels)]


def main() -> None:
    root, project_dir = corpus_and_project_dir("msp-improv", __doc__.splitlines()[0])
    write_folds(project_dir, "msp-improv", read_corpus(root), kfold(SESSIONS, 6, last_one))


if __name__ == "__main__":
    run_main(main)
