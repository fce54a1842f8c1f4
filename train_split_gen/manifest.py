"""Any corpus through a manifest CSV: columns path,label,speaker and optional gender, split.

Without a split column: --num_folds speaker-independent folds as the original's protocol (KFold, no shuffle, over
the sorted speakers; dev is the last ceil(n/5) training speakers) -> train_split/<NAME>_fold<k>.json. With one
(train/dev/test): a single fold -> train_split/<NAME>.json. The corpus description (labels, folds) goes to
train_split/<NAME>.corpus.json; from then on every stage takes --dataset NAME.

  python3 train_split_gen/manifest.py --manifest my_corpus.csv --dataset my_corpus [--num_folds 5] \\
      [--labels neutral,angry,sad,happy] [--config config/config.yml]
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_split_gen.common import assign, kfold, last_fifth, log, write_split  # noqa: E402
from utils.core.config import load_config  # noqa: E402
from utils.data.corpora import get_corpus  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.core.io import write_json  # noqa: E402
from utils.data.manifest import SPLITS, corpus_description, manifest_corpus  # noqa: E402
from utils.data.layout import corpus_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, type=Path, help="CSV: path,label,speaker[,gender][,split]")
    parser.add_argument("--dataset", required=True, help="the corpus' name for every later stage (--dataset NAME)")
    parser.add_argument("--num_folds", type=int, default=5, help="speaker folds when there is no split column")
    parser.add_argument("--labels", default=None, help="comma-separated subset of labels, in class order")
    parser.add_argument("--config", default=None, help="config.yml (default: the repo's config/config.yml)")
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s ==> %(message)s", level=logging.INFO,
                        datefmt="%Y-%m-%d %H:%M:%S")
    project_dir = Path(load_config(args.config)["project_dir"])
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    corpus, items = manifest_corpus(args.manifest, args.dataset, args.num_folds, labels)
    write_json(corpus_path(project_dir, corpus.name), corpus_description(corpus, args.manifest))
    get_corpus(corpus.name, project_dir)  # the split files are named after the description just written
    if corpus.num_folds:
        speakers = sorted({speaker for speaker, _, _ in items})
        for fold in kfold(speakers, corpus.num_folds, last_fifth):
            write_split(project_dir, corpus.name, fold.number, assign([(s, e) for s, _, e in items], fold))
    else:
        write_split(project_dir, corpus.name, 1, {s: [e for _, split, e in items if split == s] for s in SPLITS})
    log.info("%s: %d utterances, %d speakers, classes %s, %s; described in %s", corpus.name, len(items),
             len({s for s, _, _ in items}), ", ".join(corpus.class_names),
             f"{corpus.num_folds} speaker folds" if corpus.num_folds else "one fold from the split column",
             corpus_path(project_dir, corpus.name))


if __name__ == "__main__":
    run_main(main)
