"""The built-in synthetic corpus (--generate writes it) and its train/dev/test splits.

The corpus is utils/data/synthetic.py's. As for RAVDESS/CREMA-D: 5 folds over speakers (KFold, no shuffle); dev is
the last fifth of each fold's training speakers.

Entries are [key, speaker id, gender, path, label], e.g.
["spk01_neu_1", "demo_spk01", "F", "/data/demo/spk01_F/spk01_neu_1.wav", "neu"].

--generate first writes the corpus into data_dir.demo when that folder has no speakers.csv yet.
"""
import csv
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.splits import kfold, last_fifth  # noqa: E402
from utils.core.config import add_config_flag, load_config, corpus_dir  # noqa: E402
from utils.data.corpora import get_corpus  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.core.flags import ArgumentParser  # noqa: E402
from utils.core.io import write_json  # noqa: E402
from utils.data.layout import SPLITS, split_path  # noqa: E402
from utils.data.synthetic import EMOTIONS, make_corpus  # noqa: E402

DATASET = "demo"


def read_speakers(data_dir: Path) -> list[tuple[str, str]]:
    """(speaker, gender) rows of speakers.csv, sorted by speaker."""
    table = data_dir / "speakers.csv"
    if not table.is_file():
        raise TrustSerError(f"{table} not found: {data_dir} is not a synthetic corpus; "
                            f"rerun with --generate or run python -m utils.data.synthetic {data_dir}")
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(row.get("gender") not in ("F", "M") or not row.get("speaker") for row in rows):
        raise TrustSerError(f"{table} must have columns speaker,gender with gender F or M on every row")
    return sorted((row["speaker"], row["gender"]) for row in rows)


def speaker_entries(data_dir: Path, speaker: str, gender: str) -> list[list]:
    folder = data_dir / f"{speaker}_{gender}"
    files = sorted(folder.glob(f"{speaker}_*.wav"))
    if not files:
        raise TrustSerError(f"no {speaker}_*.wav files in {folder}")
    entries = []
    for path in files:
        emotion = path.stem.split("_")[1] if path.stem.count("_") == 2 else None
        if emotion not in EMOTIONS:
            raise TrustSerError(f"{path}: file name is not <speaker>_<emotion>_<k>.wav with emotion in {EMOTIONS}")
        entries.append([path.stem, f"{DATASET}_{speaker}", gender, str(path), emotion])
    return entries


def fold_speakers(speakers: list, n_folds: int) -> list[tuple[list, list, list]]:
    """(train, dev, test) speakers per fold; dev is the last ceil(len(train)/5) training speakers."""
    return [(list(f.train), list(f.dev), list(f.test)) for f in kfold(speakers, n_folds, last_fifth)]


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_config_flag(parser)
    parser.add_argument("--generate", action="store_true",
                        help="write the synthetic corpus into data_dir.demo first if it is not there yet")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    config = load_config(args.config)
    if args.generate and DATASET in config["data_dir"]:
        target = Path(config["data_dir"][DATASET])
        if not (target / "speakers.csv").is_file():
            logging.info(f"generating the synthetic corpus in {target}")
            make_corpus(target)
    data_dir = corpus_dir(config, DATASET)
    speakers = read_speakers(data_dir)
    n_folds = get_corpus(DATASET).num_folds
    if len(speakers) < n_folds:
        raise TrustSerError(f"{data_dir / 'speakers.csv'} lists {len(speakers)} speakers; {n_folds} folds need at least {n_folds}")
    entries = {speaker: speaker_entries(data_dir, speaker, gender) for speaker, gender in speakers}
    for fold, split_speakers in enumerate(fold_speakers([s for s, _ in speakers], n_folds), start=1):
        split = {name: [e for s in names for e in entries[s]]
                 for name, names in zip(SPLITS, split_speakers)}
        write_json(split_path(config["project_dir"], DATASET, fold), split)
        logging.info(f"fold {fold}: " + ", ".join(f"{name} {len(split[name])} files ({len(names)} speakers)"
                                                  for name, names in zip(split, split_speakers)))


if __name__ == "__main__":
    run_main(main)
