"""Where a corpus' files live under <project_dir>: split files, preprocessed audio, the feature cache (a manifest
corpus' description: utils.data.corpora.corpus_path, which the corpus table reads)."""
from pathlib import Path

from utils.data.corpora import files_name, split_file_name

SPLITS = ("train", "dev", "test")      # the lists of a split file, in order


def split_path(project_dir: str | Path, dataset: str, fold: int) -> Path:
    return Path(project_dir) / "train_split" / split_file_name(dataset, fold)


def audio_dir(project_dir: str | Path, dataset: str) -> Path:
    return Path(project_dir) / "audio" / files_name(dataset)


def cache_dir(project_dir: str | Path) -> Path:
    return Path(project_dir) / "cache"
