"""Preprocessing a corpus: every file of its splits resampled to 16 kHz mono, once (preprocess_audio.py)."""
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.backbones import MIN_SAMPLES
from utils.core.errors import TrustSerError
from utils.core.io import write_wav
from utils.data.audio import TARGET_SR, BadAudioError, audio_info, read_audio, to_16k_mono
from utils.data.corpora import preprocessed_name
from utils.data.layout import SPLITS
from utils.data.utterances import read_split_file


def plan_outputs(dataset: str, split_files: list[Path], config: str | None = None) -> dict[str, str]:
    """Output file name -> source audio path over all split files; two sources for one name is an error.
    config: the --config given, repeated in the command of a hint."""
    plan: dict[str, str] = {}
    for path in split_files:
        split = read_split_file(path, dataset, config)
        for name in SPLITS:
            for entry in split[name]:
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
