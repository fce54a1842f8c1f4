"""Resample every file of a corpus' splits to 16 kHz mono, into <project_dir>/audio/<dataset>/.

Reads all folds' split files (their union: a file is written once), skips outputs already done (unless their source
changed since, audio included), and reports unreadable inputs at the end (non-zero exit, unless --skip_bad).
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.config import add_config_flag, load_config  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.core.flags import ArgumentParser  # noqa: E402
from utils.data.corpora import CORPORA, get_corpus  # noqa: E402
from utils.data.layout import audio_dir, split_path  # noqa: E402
from utils.data.preprocessing import plan_outputs, preprocess  # noqa: E402

SHOWN_BAD = 3


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(CORPORA)}, or a manifest corpus "
                        f"(train_split_gen/manifest.py)")
    add_config_flag(parser)
    parser.add_argument("--skip_bad", action="store_true",
                        help="warn about unreadable input files and exit 0 instead of failing")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    config = load_config(args.config)
    corpus = get_corpus(args.dataset, config["project_dir"])
    split_files = [split_path(config["project_dir"], corpus.name, fold) for fold in corpus.fold_ids()]
    plan = plan_outputs(corpus.name, split_files, args.config)
    out_dir = audio_dir(config["project_dir"], corpus.name)
    outcome = preprocess(plan, out_dir)
    again, bad, short = outcome.again, outcome.bad, outcome.short
    logging.info(f"{corpus.name}: {len(plan)} files in the splits; {outcome.written} written, "
                 f"{outcome.skipped} already preprocessed (skipped), {len(bad)} unreadable; output in {out_dir}")
    if again:
        logging.warning(f"{len(again)} file(s) written again, their audio changed since they were preprocessed ("
                        + ", ".join(again[:SHOWN_BAD]) + (", ..." if len(again) > SHOWN_BAD else "")
                        + "): runs trained on the old audio do not match it any more")
    if short:
        logging.warning(f"{len(short)} clip(s) shorter than 25 ms, which no backbone takes ("
                        + ", ".join(short[:SHOWN_BAD]) + (", ..." if len(short) > SHOWN_BAD else "")
                        + "): training stops on them, or leaves them out with --skip_bad")
    if not bad:
        return
    if args.skip_bad:
        for message in bad:
            logging.warning(f"skipped unreadable input: {message}")
        return
    shown = "; ".join(bad[:SHOWN_BAD]) + ("; ..." if len(bad) > SHOWN_BAD else "")
    raise TrustSerError(f"{len(bad)} of {len(plan)} input files are unreadable ({shown}); "
                        f"fix them, or rerun with --skip_bad to leave them out")


if __name__ == "__main__":
    run_main(main)
