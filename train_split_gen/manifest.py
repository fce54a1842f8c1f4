"""Any corpus through a manifest CSV: columns path,label,speaker and optional gender, split, and any others.

Without a split column: --num_folds speaker-independent folds -> train_split/<NAME>_fold<k>.json. With a gender
column they are balanced by gender (StratifiedKFold over the sorted speakers, dev speakers chosen per gender, so
dev and test hold both genders wherever the corpus has enough speakers); without one, the original's protocol
(KFold, no shuffle, over the sorted speakers; dev is the last ceil(n/5) training speakers). With a split column
(train/dev/test): a single fold -> train_split/<NAME>.json. The corpus description (labels, folds, the other
columns per speaker, for fairness --group_by) goes to train_split/<NAME>.corpus.json; from then on every stage
takes --dataset NAME.

  python3 train_split_gen/manifest.py --manifest my_corpus.csv --dataset my_corpus [--num_folds 5] \\
      [--labels neutral,angry,sad,happy] [--config config/config.yml]
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collections import Counter  # noqa: E402

from utils.data.splits import (SPLITS, Fold, assign, kfold, last_fifth, log, stratified_kfold,  # noqa: E402
                                    write_split)
from utils.core.config import add_config_flag, load_config  # noqa: E402
from utils.data.corpora import corpus_path, get_corpus  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.core.flags import ArgumentParser  # noqa: E402
from utils.core.io import write_json  # noqa: E402
from utils.data.manifest import corpus_description, manifest_corpus  # noqa: E402


def speaker_folds(genders: dict[str, str], num_folds: int) -> list[Fold]:
    """Folds balanced by gender where the manifest has one (a speaker of unknown gender is its own stratum)."""
    speakers = sorted(genders)
    strata = [genders[s].lower() for s in speakers]
    counts = Counter(strata)
    if set(strata) == {""}:
        log.info("speaker folds: KFold over the sorted speakers, dev the last ceil(n/5) training speakers "
                 "(the original's protocol; no gender column)")
        return kfold(speakers, num_folds, last_fifth)
    if max(counts.values()) < num_folds:
        log.warning("speaker folds: no gender has %d speakers (%s); KFold over the sorted speakers instead",
                    num_folds, count_text(counts))
        return kfold(speakers, num_folds, last_fifth)
    log.info("speaker folds balanced by gender (%s): StratifiedKFold over the sorted speakers for test, dev "
             "speakers chosen per gender", count_text(counts))
    return stratified_kfold(speakers, strata, num_folds, last_fifth)


def count_text(counts: Counter) -> str:
    return ", ".join(f"{gender or 'unknown'} {n}" for gender, n in sorted(counts.items()))


def log_genders(fold: Fold, genders: dict[str, str]) -> None:
    """Speakers per gender in each split; a warning where dev or test holds one gender of several."""
    parts = {name: Counter(genders[s].lower() for s in getattr(fold, name)) for name in SPLITS}
    log.info("fold %d speakers by gender: %s", fold.number,
             "; ".join(f"{name} {count_text(parts[name])}" for name in SPLITS))
    known = {g for g in genders.values() if g}
    single = [name for name in ("dev", "test") if len(known) > 1 and len(set(parts[name]) - {""}) < 2]
    if single:
        log.warning("fold %d: %s holds one gender only (too few speakers of the other)", fold.number,
                    " and ".join(single))


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, type=Path, help="CSV: path,label,speaker[,gender][,split]")
    parser.add_argument("--dataset", required=True, help="the corpus' name for every later stage (--dataset NAME)")
    parser.add_argument("--num_folds", type=int, default=5, help="speaker folds when there is no split column")
    parser.add_argument("--labels", default=None, help="comma-separated subset of labels, in class order")
    add_config_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s ==> %(message)s", level=logging.INFO,
                        datefmt="%Y-%m-%d %H:%M:%S")
    project_dir = Path(load_config(args.config)["project_dir"])
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    found = manifest_corpus(args.manifest, args.dataset, args.num_folds, labels)
    corpus, items, genders = found.corpus, found.items, found.speaker_genders()
    write_json(corpus_path(project_dir, corpus.name), corpus_description(found, args.manifest))
    get_corpus(corpus.name, project_dir)  # the split files are named after the description just written
    if corpus.num_folds:
        for fold in speaker_folds(genders, corpus.num_folds):
            log_genders(fold, genders)
            write_split(project_dir, corpus.name, fold.number, assign([(s, e) for s, _, e in items], fold))
    else:
        write_split(project_dir, corpus.name, 1, {s: [e for _, split, e in items if split == s] for s in SPLITS})
    if found.speaker_columns or found.utterance_columns:
        log.info("columns for fairness --group_by: %s%s", ", ".join(found.speaker_columns) or "none",
                 "; not usable (more than one value per speaker): " + ", ".join(found.utterance_columns)
                 if found.utterance_columns else "")
    log.info("%s: %d utterances, %d speakers, classes %s, %s; described in %s", corpus.name, len(items),
             len(genders), ", ".join(corpus.class_names),
             f"{corpus.num_folds} speaker folds" if corpus.num_folds else "one fold from the split column",
             corpus_path(project_dir, corpus.name))


if __name__ == "__main__":
    run_main(main)
