"""CREMA-D: five speaker folds -> <project_dir>/train_split/crema_d_fold{1..5}.json.

KFold (no shuffle) over speakers 1001..1091; the last ceil(n/5) training speakers are dev.
Labels are processedResults/summaryTable.csv's MultiModalVote, ties such as 'N:S' included
(the label map drops them later); gender is VideoDemographics.csv's Sex; speaker ids are bare ints.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.splits import (Item, corpus_and_project_dir, is_hidden, kfold, last_fifth, log, read_csv,
                                    require_dir, warn_skipped, write_folds)
from utils.core.errors import TrustSerError, run_main

SPEAKERS = list(range(1001, 1092))
BROKEN = "1076_MTI_SAD_XX"   # an empty recording; the original skips it too


def audio_files(root: Path) -> list[Path]:
    folder = require_dir(root / "AudioWAV", f"CREMA-D folder {root} has no AudioWAV folder "
                                            f"(is data_dir.crema_d the CREMA-D folder?)")
    wavs = sorted(p for p in folder.iterdir() if p.suffix == ".wav")
    warn_skipped("hidden files in " + str(folder), [p.name for p in wavs if is_hidden(p)])
    return [p for p in wavs if not is_hidden(p)]


def read_genders(root: Path) -> dict[int, str]:
    """Actor id -> male/female from VideoDemographics.csv (first column: ActorID)."""
    path = root / "VideoDemographics.csv"
    table = read_csv(path, "CREMA-D demographics", ["Sex"])
    try:
        actors = [int(a) for a in table[table.columns[0]]]
    except ValueError:
        raise TrustSerError(f"CREMA-D demographics {path}: first column must hold integer actor ids") from None
    return {actor: "male" if sex == "Male" else "female" for actor, sex in zip(actors, table["Sex"])}


def read_votes(root: Path) -> dict[str, str]:
    """Sentence file name -> MultiModalVote (the first row wins if a name repeats; empty votes are left out)."""
    table = read_csv(root / "processedResults" / "summaryTable.csv", "CREMA-D ratings",
                     ["FileName", "MultiModalVote"])
    votes = {}
    for name, vote in zip(table["FileName"], table["MultiModalVote"]):
        if isinstance(vote, str):
            votes.setdefault(name, vote)
    return votes


def read_corpus(root: Path) -> list[Item]:
    """(speaker, entry) for every rated wav, in file-name order."""
    genders, votes = read_genders(root), read_votes(root)
    items, no_rating, bad_name = [], [], []
    for wav in audio_files(root):
        key = wav.stem
        if key == BROKEN:
            log.info("skipped %s (empty recording, skipped as in the original)", wav.name)
            continue
        speaker_text = key.split("_")[0]
        if not speaker_text.isdigit():
            bad_name.append(wav.name)
            continue
        if key not in votes:
            no_rating.append(wav.name)
            continue
        speaker = int(speaker_text)
        if speaker not in genders:
            raise TrustSerError(f"CREMA-D demographics {root / 'VideoDemographics.csv'} has no actor {speaker} "
                                f"(needed for {wav.name})")
        items.append((speaker, [key, speaker, genders[speaker], str(wav), votes[key]]))
    warn_skipped("wav files not named <actor>_<sentence>_<emotion>_<level>.wav", bad_name)
    warn_skipped("wav files without a MultiModalVote in processedResults/summaryTable.csv", no_rating)
    return items


def main() -> None:
    root, project_dir = corpus_and_project_dir("crema_d", __doc__.splitlines()[0])
    write_folds(project_dir, "crema_d", read_corpus(root), kfold(SPEAKERS, 5, last_fifth))


if __name__ == "__main__":
    run_main(main)
