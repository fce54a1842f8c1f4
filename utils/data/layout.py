"""Where a corpus' files live under <project_dir>: split files (and the fingerprint of what they hold),
preprocessed audio, the feature cache (a manifest corpus' description: utils.data.corpora.corpus_path, which the
corpus table reads)."""
import hashlib
import json
from pathlib import Path

from utils.core.io import read_json
from utils.data.corpora import files_name, split_file_name

SPLITS = ("train", "dev", "test")      # the lists of a split file, in order


def split_path(project_dir: str | Path, dataset: str, fold: int) -> Path:
    return Path(project_dir) / "train_split" / split_file_name(dataset, fold)


def splits_fingerprint(project_dir: str | Path, dataset: str, folds: list[int]) -> str | None:
    """A short hash of what the folds' split files hold: every utterance's key, speaker, gender and label, split by
    split, in their order (which the batches follow). The audio paths are left out: the same splits made where the
    corpus lies elsewhere have the same fingerprint. None while a split file is missing."""
    digest = hashlib.sha256()
    for path in dict.fromkeys(split_path(project_dir, dataset, fold) for fold in folds):
        if not path.is_file():
            return None
        split_dict = read_json(path)
        content = {split: [[*e[:3], *e[4:]] if isinstance(e, list) else e for e in split_dict.get(split) or []]
                   for split in SPLITS} if isinstance(split_dict, dict) else split_dict
        digest.update(json.dumps(content).encode())
    return digest.hexdigest()[:16]


def audio_dir(project_dir: str | Path, dataset: str) -> Path:
    return Path(project_dir) / "audio" / files_name(dataset)


def cache_dir(project_dir: str | Path) -> Path:
    return Path(project_dir) / "cache"
