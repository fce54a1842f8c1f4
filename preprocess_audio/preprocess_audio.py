"""Resample every file of a corpus' splits to 16 kHz mono, into <project_dir>/audio/<dataset>/.

Reads all folds' split files (their union: a file is written once), skips outputs already done,
and reports unreadable inputs at the end (non-zero exit, unless --skip_bad).
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from utils.data.audio import TARGET_SR, BadAudioError, audio_info, read_audio, to_16k_mono  # noqa: E402
from utils.core.config import add_config_flag, load_config  # noqa: E402
from utils.data.corpora import CORPORA, get_corpus, preprocessed_name, split_command  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.core.flags import ArgumentParser  # noqa: E402
from utils.core.io import read_json, write_wav  # noqa: E402
from utils.data.layout import SPLITS, audio_dir, split_path  # noqa: E402
from model.backbones import MIN_SAMPLES  # noqa: E402

SHOWN_BAD = 3


def read_split_file(path: Path, dataset: str, config: str | None) -> dict:
    if not path.is_file():
        raise TrustSerError(f"split file {path} not found; run first: {split_command(dataset, config)}")
    split = read_json(path)
    if not isinstance(split, dict) or not any(isinstance(split.get(s), list) for s in SPLITS):
        raise TrustSerError(f"{path} is not a split file: expected lists under 'train', 'dev' and 'test'")
    for name in SPLITS:
        for entry in split.get(name, []):
            if not isinstance(entry, list) or len(entry) < 5:
                raise TrustSerError(f"{path}: {name} entry {entry!r} is not [key, speaker, gender, path, label]")
    return split


def plan_outputs(dataset: str, split_files: list[Path], config: str | None = None) -> dict[str, str]:
    """Output file name -> source audio path over all split files; two sources for one name is an error.
    config: the --config given, repeated in the command of a hint."""
    plan: dict[str, str] = {}
    for path in split_files:
        split = read_split_file(path, dataset, config)
        for name in SPLITS:
            for entry in split.get(name, []):
                out_name, source = preprocessed_name(dataset, entry, name), str(entry[3])
                if plan.setdefault(out_name, source) != source:
                    raise TrustSerError(f"{path}: {plan[out_name]} and {source} would both be preprocessed "
                                        f"to {out_name}; output names of {dataset} must be unique")
    return plan


def is_done(output: Path) -> bool:
    """A complete (writes are atomic), readable 16 kHz mono file."""
    if not output.is_file():
        return False
    try:
        sr, channels, frames = audio_info(output)
    except BadAudioError:
        return False
    return sr == TARGET_SR and channels == 1 and frames > 0


def preprocess(plan: dict[str, str], out_dir: Path) -> tuple[int, int, list[str], list[str]]:
    """Write what is not done yet; returns (written, skipped, bad-file messages, written clips under 25 ms)."""
    written, skipped, bad, short = 0, 0, [], []
    for out_name, source in tqdm(sorted(plan.items()), desc=f"preprocess {out_dir.name}", unit="file"):
        output = out_dir / out_name
        if is_done(output):
            skipped += 1
            continue
        try:
            audio, sr = read_audio(source)
        except BadAudioError as err:
            bad.append(str(err))
            continue
        clip = to_16k_mono(audio, sr)
        write_wav(output, clip, TARGET_SR)
        written += 1
        if len(clip) < MIN_SAMPLES:
            short.append(source)
    return written, skipped, bad, short


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
    written, skipped, bad, short = preprocess(plan, out_dir)
    logging.info(f"{corpus.name}: {len(plan)} files in the splits; {written} written, "
                 f"{skipped} already preprocessed (skipped), {len(bad)} unreadable; output in {out_dir}")
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
