"""Print the fold numbers of --dataset, space-separated (for slurm_array.sh / run_local.sh); other flags are ignored.

  python3 scripts/corpus_folds.py --dataset iemocap            # 1 2 3 4 5
  python3 scripts/corpus_folds.py --dataset msp-podcast --protocol original   # 1 2 3 4 5: seeded runs, one split
  python3 scripts/corpus_folds.py --dataset mine --config c.yml  # a manifest corpus: its own folds
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.corpora import CORPORA, SINGLE_SPLIT_RUNS, get_corpus  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.core.flags import ArgumentParser  # noqa: E402
from utils.runs.identity import RunConfig  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=RunConfig.dataset)
    parser.add_argument("--config", default=None)
    parser.add_argument("--protocol", default="fixed", choices=list(SINGLE_SPLIT_RUNS))
    parser.add_argument("--seeds", default=None, type=int)
    args, _ = parser.parse_known_args(argv)
    if args.dataset in CORPORA:  # no config needed
        corpus = get_corpus(args.dataset)
    else:
        from utils.core.config import load_config
        corpus = get_corpus(args.dataset, load_config(args.config)["project_dir"])
    runs = args.seeds or SINGLE_SPLIT_RUNS[args.protocol]    # as utils.training.protocol.fold_ids
    print(" ".join(str(f) for f in corpus.fold_ids(runs)))


if __name__ == "__main__":
    run_main(main)
