"""Any corpus through a manifest CSV (path,label,speaker[,gender][,split]) -> a corpus description and its items.

The description (label map, class names, folds) is saved as <project_dir>/train_split/<name>.corpus.json, where
utils.data.corpora.get_corpus finds it by name; the split files are written as for the built-in corpora.
"""
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from utils.data.corpora import CORPORA, Corpus
from utils.core.errors import TrustSerError

REQUIRED = ("path", "label", "speaker")
SPLITS = ("train", "dev", "test")
SHOWN = 3


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest with every cell as text, stripped; one-line errors for a missing file or column."""
    if not path.is_file():
        raise TrustSerError(f"manifest {path} not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, UnicodeDecodeError) as err:  # pandas' parse errors are ValueErrors
        raise TrustSerError(f"manifest {path} is unreadable ({str(err).splitlines()[0]})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise TrustSerError(f"manifest {path} has no column(s) {', '.join(missing)} "
                            f"(needed: path,label,speaker; optional: gender,split)")
    if table.empty:
        raise TrustSerError(f"manifest {path} has no rows")
    table = table.apply(lambda column: column.str.strip())
    empty = table[list(REQUIRED)].eq("").any(axis=1)
    if empty.any():
        raise TrustSerError(f"manifest {path}: {int(empty.sum())} row(s) with an empty path, label or speaker "
                            f"(first: line {int(empty.idxmax()) + 2})")
    return table


def resolve_paths(table: pd.DataFrame, manifest: Path) -> list[Path]:
    """Audio paths, relative ones against the manifest's folder; every file must exist."""
    base = manifest.resolve().parent
    paths = [(base / p).resolve() for p in table["path"]]
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        shown = ", ".join(absent[:SHOWN]) + (", ..." if len(absent) > SHOWN else "")
        raise TrustSerError(f"manifest {manifest}: {len(absent)} of {len(paths)} audio files do not exist ({shown})")
    return paths


def class_names(labels: pd.Series, subset: list[str] | None, manifest: Path) -> list[str]:
    """The data's own labels (sorted), or the --labels subset in that order."""
    present = sorted(set(labels))
    if not subset:
        return present
    unknown = [label for label in subset if label not in present]
    if unknown:
        raise TrustSerError(f"--labels {','.join(subset)}: {', '.join(unknown)} not in manifest {manifest} "
                            f"(its labels: {', '.join(present)})")
    return subset


def audio_key(path: Path, manifest: Path) -> str:
    """A unique, file-system-safe key: the path relative to the manifest's folder, '/' -> '__'."""
    base = manifest.resolve().parent
    relative = path.relative_to(base) if path.is_relative_to(base) else Path(*path.parts[1:])
    return "__".join(relative.parts)


def check_name(name: str) -> None:
    if name in CORPORA:
        raise TrustSerError(f"--dataset {name} is a built-in corpus; give the manifest corpus another name")
    if not name or "/" in name or name.startswith("."):
        raise TrustSerError(f"--dataset '{name}' must be a plain file name (it names the split files)")


def check_folds(table: pd.DataFrame, num_folds: int, manifest: Path) -> None:
    """Speaker-independent folds need at least num_folds speakers and examples of every label."""
    speakers = table["speaker"].nunique()
    if speakers < 2:
        raise TrustSerError(f"manifest {manifest}: a single speaker ({table['speaker'].iloc[0]}); "
                            f"speaker-independent folds need at least {num_folds}")
    if speakers < num_folds:
        raise TrustSerError(f"manifest {manifest}: {speakers} speakers for {num_folds} folds; use --num_folds "
                            f"{speakers} or fewer, or give a split column")
    counts = Counter(table["label"])
    rare = [f"{label} ({n})" for label, n in sorted(counts.items()) if n < num_folds]
    if rare:
        raise TrustSerError(f"manifest {manifest}: label(s) with fewer examples than the {num_folds} folds: "
                            f"{', '.join(rare)}; leave them out with --labels or lower --num_folds")


def check_splits(table: pd.DataFrame, manifest: Path) -> None:
    values = set(table["split"].str.lower())
    bad = sorted(values - set(SPLITS))
    if bad:
        raise TrustSerError(f"manifest {manifest}: split values must be train, dev or test, found {', '.join(bad)}")
    absent = [s for s in SPLITS if s not in values]
    if absent:
        raise TrustSerError(f"manifest {manifest}: no {' / '.join(absent)} rows in the split column")
    if table["speaker"].nunique() < 2:
        raise TrustSerError(f"manifest {manifest}: a single speaker ({table['speaker'].iloc[0]}); speaker metrics "
                            f"need at least two")


def manifest_corpus(manifest: Path, name: str, num_folds: int, labels: list[str] | None
                    ) -> tuple[Corpus, list[tuple[str, str, list]]]:
    """The corpus description and its (speaker, split or "", entry) items, entries [key, speaker, gender, path,
    label]; rows with labels outside --labels are left out."""
    check_name(name)
    table = read_manifest(manifest)
    names = class_names(table["label"], labels, manifest)
    table = table[table["label"].isin(names)]
    has_split = "split" in table.columns
    if has_split:
        check_splits(table, manifest)
    else:
        if num_folds < 2:
            raise TrustSerError(f"--num_folds {num_folds}: speaker folds need at least 2")
        check_folds(table, num_folds, manifest)
    paths = resolve_paths(table, manifest)
    genders = table["gender"] if "gender" in table.columns else [""] * len(table)
    splits = table["split"].str.lower() if has_split else [""] * len(table)
    items = [(speaker, split, [audio_key(path, manifest), speaker, gender, str(path), label])
             for path, label, speaker, gender, split in zip(paths, table["label"], table["speaker"], genders, splits)]
    corpus = Corpus(name, {label: i for i, label in enumerate(names)}, names, 0 if has_split else num_folds,
                    keyed_audio_names=True)
    return corpus, items


def corpus_description(corpus: Corpus, manifest: Path) -> dict:
    return {**asdict(corpus), "manifest": str(manifest.resolve())}
