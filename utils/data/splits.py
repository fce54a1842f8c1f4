"""What the train_split_gen scripts share: --config, folds, reading label files, writing the splits.

Every script writes `{"train": [...], "dev": [...], "test": [...]}` with entries
`[key, speaker_id, gender, path, label]` to utils.data.layout.split_path(project_dir, dataset, fold).
"""
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from utils.core.config import add_config_flag, corpus_dir, load_config
from utils.core.errors import TrustSerError
from utils.core.flags import ArgumentParser
from utils.core.io import write_json
from utils.data.layout import SPLITS, split_path

log = logging.getLogger("train_split_gen")

# (group, entry): the group (session or speaker) decides the split of the entry in each fold
Item = tuple[Hashable, list]


def corpus_and_project_dir(dataset: str, description: str) -> tuple[Path, Path]:
    """Parse --config and set up logging; return (the corpus folder as distributed, project_dir)."""
    parser = ArgumentParser(description=description)
    add_config_flag(parser)
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s ==> %(message)s", level=logging.INFO,
                        datefmt="%Y-%m-%d %H:%M:%S")
    config = load_config(args.config)
    return corpus_dir(config, dataset), Path(config["project_dir"])


@dataclass(frozen=True)
class Fold:
    number: int          # 1-based, as in <name>_fold<number>.json
    train: tuple
    dev: tuple
    test: tuple

    def split_of(self, group: Hashable) -> str:
        """Groups in neither test nor dev go to train, as in the original (its `else` branch)."""
        if group in self.test:
            return "test"
        if group in self.dev:
            return "dev"
        return "train"


def last_one(n_train: int) -> int:
    """Dev size for session folds: the last training session."""
    return 1


def last_fifth(n_train: int) -> int:
    """Dev size for speaker folds. The original's `train[-len(train)//5:]` parses as
    `train[(-len(train))//5:]`, i.e. the last ceil(n/5) groups (15 of 72 CREMA-D speakers, not 14)."""
    return -(-n_train // 5)


def kfold(groups: Sequence[Hashable], n_splits: int, dev_size: Callable[[int], int]) -> list[Fold]:
    """KFold over groups (no shuffle); the last dev_size(len(train)) training groups become dev."""
    folds = []
    for number, (train_idx, test_idx) in enumerate(KFold(n_splits).split(np.zeros(len(groups))), start=1):
        n_dev = dev_size(len(train_idx))
        folds.append(Fold(number,
                          train=tuple(groups[i] for i in train_idx[:-n_dev]),
                          dev=tuple(groups[i] for i in train_idx[-n_dev:]),
                          test=tuple(groups[i] for i in test_idx)))
    return folds


def stratified_kfold(groups: Sequence[Hashable], strata: Sequence[str], n_splits: int,
                     dev_size: Callable[[int], int]) -> list[Fold]:
    """Test groups by scikit-learn's StratifiedKFold (no shuffle) over the strata (e.g. the speakers' genders),
    so each test set holds every stratum the corpus has enough groups of; dev by dev_groups."""
    with warnings.catch_warnings():     # a stratum with fewer groups than folds: the split log shows the counts
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(StratifiedKFold(n_splits).split(np.zeros(len(groups)), list(strata)))
    folds = []
    for number, (train_idx, test_idx) in enumerate(splits, start=1):
        train = [groups[i] for i in train_idx]
        dev = dev_groups(train, [strata[i] for i in train_idx], dev_size(len(train)))
        folds.append(Fold(number, train=tuple(g for g in train if g not in dev), dev=tuple(dev),
                          test=tuple(groups[i] for i in test_idx)))
    return folds


def dev_groups(train: list, strata: list[str], n_dev: int) -> list:
    """n_dev training groups for dev, the last ones of each stratum: one of every stratum that keeps a group in
    train (n_dev grows to that number), the rest to the strata with the most groups left in train."""
    by_stratum = {s: [g for g, t in zip(train, strata) if t == s] for s in dict.fromkeys(strata)}
    quota = {s: int(len(members) >= 2) for s, members in by_stratum.items()}
    if not any(quota.values()):
        return train[-n_dev:]
    while sum(quota.values()) < n_dev:
        spare = {s: len(by_stratum[s]) - quota[s] for s in by_stratum if len(by_stratum[s]) - quota[s] >= 2}
        if not spare:
            break
        quota[max(spare, key=spare.get)] += 1
    chosen = {g for s, members in by_stratum.items() for g in members[len(members) - quota[s]:]}
    return [g for g in train if g in chosen]


def assign(items: Iterable[Item], fold: Fold) -> dict[str, list]:
    """Splits of one fold, keeping the order of items within each split."""
    splits = {name: [] for name in SPLITS}
    for group, entry in items:
        splits[fold.split_of(group)].append(entry)
    return splits


def write_split(project_dir: Path, dataset: str, fold: int, splits: dict[str, list]) -> Path:
    """Write one split file and log its per-split counts."""
    path = split_path(project_dir, dataset, fold)
    write_json(path, {name: splits[name] for name in SPLITS})
    counts = ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
    log.info("%s: %s utterances -> %s", path.stem, counts, path)
    return path


def write_folds(project_dir: Path, dataset: str, items: list[Item], folds: list[Fold]) -> list[Path]:
    """Write <dataset>_fold<k>.json for every fold."""
    if not items:
        raise TrustSerError(f"no labelled utterances found for {dataset}; check data_dir.{dataset}")
    return [write_split(project_dir, dataset, fold.number, assign(items, fold)) for fold in folds]


def require_dir(path: Path, message: str) -> Path:
    if not path.is_dir():
        raise TrustSerError(message)
    return path


def read_text(path: Path, what: str) -> str:
    """A label file as text; a one-line error when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrustSerError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TrustSerError(f"{what} {path} is unreadable ({type(err).__name__}: {err})") from None


def read_csv(path: Path, what: str, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV label file with every cell as text (pandas' usual NA handling); checks the needed columns."""
    if not path.is_file():
        raise TrustSerError(f"{what} {path} not found")
    try:
        table = pd.read_csv(path, dtype=str, encoding_errors="replace")
    except (OSError, ValueError) as err:  # pandas' parse errors are ValueErrors
        raise TrustSerError(f"{what} {path} is unreadable ({str(err).splitlines()[0]})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TrustSerError(f"{what} {path} has no column(s) {', '.join(missing)}")
    return table


def is_hidden(path: Path) -> bool:
    """macOS/editor clutter such as .DS_Store or ._name AppleDouble files."""
    return path.name.startswith(".")


def warn_skipped(reason: str, names: Sequence[str]) -> None:
    if names:
        shown = ", ".join(str(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        log.warning("skipped %d %s: %s", len(names), reason, shown)
