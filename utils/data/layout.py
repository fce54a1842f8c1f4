"""Where a corpus' files live under <project_dir>: split files, manifest descriptions, preprocessed audio, the feature cache."""
from pathlib import Path

from utils.data.corpora import files_name, split_file_name


def split_path(project_dir: str | Path, dataset: str, fold: int) -> Path:
    return Path(project_dir) / "train_split" / split_file_name(dataset, fold)


def corpus_path(project_dir: str | Path, dataset: str) -> Path:
    """A manifest corpus' description (train_split_gen/manifest.py)."""
    return Path(project_dir) / "train_split" / f"{dataset}.corpus.json"


def audio_dir(project_dir: str | Path, dataset: str) -> Path:
    return Path(project_dir) / "audio" / files_name(dataset)


def cache_dir(project_dir: str | Path) -> Path:
    return Path(project_dir) / "cache"
