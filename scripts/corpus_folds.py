"""Print the fold numbers of --dataset, space-separated (for slurm_array.sh / run_local.sh); other flags are ignored.

  python3 scripts/corpus_folds.py --dataset iemocap            # 1 2 3 4 5
  python3 scripts/corpus_folds.py --dataset mine --config c.yml  # a manifest corpus: its own folds
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.corpora import CORPORA, get_corpus  # noqa: E402
from utils.core.errors import run_main  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="iemocap")  # RunConfig's default (not imported: it loads torch)
    parser.add_argument("--config", default=None)
    args, _ = parser.parse_known_args()
    if args.dataset in CORPORA:  # no config needed
        corpus = get_corpus(args.dataset)
    else:
        from utils.core.config import load_config
        corpus = get_corpus(args.dataset, load_config(args.config)["project_dir"])
    print(" ".join(str(f) for f in corpus.fold_ids()))


if __name__ == "__main__":
    run_main(main)
