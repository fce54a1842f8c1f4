"""Resample every file of a corpus' splits to 16 kHz mono, into <project_dir>/audio/<dataset>/.

Reads all folds' split files (their union: a file is written once), skips outputs already done (unless their source
changed since, audio included), and reports unreadable inputs at the end (non-zero exit, unless --skip_bad).
"""
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
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


def changed_since(source: str, output: Path) -> bool:
    """The source was modified after its preprocessed copy was written (False where it is gone)."""
    try:
        return os.stat(source).st_mtime_ns > output.stat().st_mtime_ns
    except OSError:
        return False


@dataclass
class Preprocessed:
    written: int = 0
    skipped: int = 0
    again: list[str] = field(default_factory=list)      # sources written again: their audio changed
    bad: list[str] = field(default_factory=list)        # why each unreadable source is
    short: list[str] = field(default_factory=list)      # sources written whose clip is under 25 ms


def preprocess(plan: dict[str, str], out_dir: Path) -> Preprocessed:
    """Write what is not done yet, and again where the source changed since and its audio with it (a copy of the
    corpus with new times but the same audio keeps its files, and the feature cache built on them)."""
    outcome = Preprocessed()
    for out_name, source in tqdm(sorted(plan.items()), desc=f"preprocess {out_dir.name}", unit="file"):
        output = out_dir / out_name
        was_done = is_done(output)
        if was_done and not changed_since(source, output):
            outcome.skipped += 1
            continue
        try:
            audio, sr = read_audio(source)
        except BadAudioError as err:
            outcome.bad.append(str(err))
            continue
        clip = to_16k_mono(audio, sr)
        if was_done and np.array_equal(read_audio(output)[0][0], clip):
            outcome.skipped += 1
            continue
        write_wav(output, clip, TARGET_SR)
        outcome.written += 1
        if was_done:
            outcome.again.append(source)
        if len(clip) < MIN_SAMPLES:
            outcome.short.append(source)
    return outcome


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
