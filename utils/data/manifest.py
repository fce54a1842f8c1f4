"""Any corpus through a manifest CSV (path,label,speaker[,gender][,split][,more columns]) -> a corpus description
and its items.

The description (label map, class names, folds, the extra columns per speaker) is saved as
<project_dir>/train_split/<name>.corpus.json, where utils.data.corpora.get_corpus finds it by name; the split
files are written as for the built-in corpora.
"""
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from utils.data.corpora import CORPORA, Corpus, corpus_path
from utils.core.errors import TrustSerError
from utils.data.layout import SPLITS

REQUIRED = ("path", "label", "speaker")
KNOWN = (*REQUIRED, "gender", "split")
SHOWN = 3
log = logging.getLogger("trust-ser")


def shown(names: list) -> str:
    return ", ".join(str(n) for n in names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


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
        raise TrustSerError(f"manifest {manifest}: {len(absent)} of {len(paths)} audio files do not exist "
                            f"({shown(absent)})")
    return paths


def check_duplicates(table: pd.DataFrame, manifest: Path) -> None:
    """One file listed twice (under any label) would sit in two places of a split, or in train and test."""
    base = manifest.resolve().parent
    lines = pd.Series(table.index + 2, index=[str((base / p).resolve()) for p in table["path"]])
    repeated = lines[lines.index.duplicated(keep=False)].groupby(level=0).agg(list)
    if len(repeated):
        listed = [f"{path} (lines {', '.join(map(str, numbers))})" for path, numbers in repeated.items()]
        raise TrustSerError(f"manifest {manifest}: {len(repeated)} file(s) listed more than once: {shown(listed)}")


def speaker_level(table: pd.DataFrame, column: str) -> str | None:
    """None if every speaker has one value of the column, else an example: 'spk01: a, b'."""
    values = table.groupby("speaker", sort=True)[column].unique()
    mixed = values[values.map(len) > 1]
    return None if mixed.empty else f"{mixed.index[0]}: {', '.join(sorted(mixed.iloc[0]))}"


def class_names(labels: pd.Series, subset: list[str] | None, manifest: Path) -> list[str]:
    """The data's own labels (sorted), or the --labels subset in that order."""
    present = sorted(set(labels))
    if not subset:
        if len(present) < 2:
            raise TrustSerError(f"manifest {manifest}: every row has the label {present[0]!r}; emotion recognition "
                                f"needs at least 2 classes")
        return present
    unknown = [label for label in subset if label not in present]
    if unknown:
        raise TrustSerError(f"--labels {','.join(subset)}: {', '.join(unknown)} not in manifest {manifest} "
                            f"(its labels: {', '.join(present)})")
    repeated = sorted({label for label in subset if subset.count(label) > 1})
    if repeated:
        raise TrustSerError(f"--labels {','.join(subset)}: {', '.join(repeated)} given twice")
    if len(subset) < 2:
        raise TrustSerError(f"--labels {','.join(subset)}: emotion recognition needs at least 2 classes")
    return subset


def audio_key(path: Path, manifest: Path) -> str:
    """A unique, file-system-safe key: the path relative to the manifest's folder, '/' -> '__'."""
    base = manifest.resolve().parent
    relative = path.relative_to(base) if path.is_relative_to(base) else Path(*path.parts[1:])
    return "__".join(relative.parts)


def keep_labels(table: pd.DataFrame, names: list[str], manifest: Path) -> pd.DataFrame:
    """The rows of the chosen classes; the others are counted in the log."""
    kept = table["label"].isin(names)
    if not kept.all():
        dropped = Counter(table.loc[~kept, "label"])
        log.info("manifest %s: left out %d row(s) whose label is not in --labels (%s)", manifest, int((~kept).sum()),
                 ", ".join(f"{label} {n}" for label, n in sorted(dropped.items())))
    return table[kept]


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
    split = table["split"].str.lower()
    values = set(split)
    bad = sorted(values - set(SPLITS))
    if bad:
        first = int((~split.isin(SPLITS)).idxmax()) + 2         # the header is line 1
        raise TrustSerError(f"manifest {manifest}: split values must be train, dev or test, found "
                            f"{shown([repr(v) for v in bad])} (first: line {first})")
    absent = [s for s in SPLITS if s not in values]
    if absent:
        raise TrustSerError(f"manifest {manifest}: no {' / '.join(absent)} rows in the split column")
    if table["speaker"].nunique() < 2:
        raise TrustSerError(f"manifest {manifest}: a single speaker ({table['speaker'].iloc[0]}); speaker metrics "
                            f"need at least two")


@dataclass
class ManifestCorpus:
    corpus: Corpus
    items: list[tuple[str, str, list]]  # (speaker, split or "", entry [key, speaker, gender, path, label])
    speaker_columns: dict               # extra column -> {speaker: value}, for columns with one value per speaker
    utterance_columns: dict             # extra column -> an example of a speaker with several values

    def speaker_genders(self) -> dict[str, str]:
        """speaker -> gender ("" where the manifest has no gender)."""
        return {speaker: entry[2] for speaker, _, entry in self.items}


def extra_columns(table: pd.DataFrame) -> tuple[dict, dict]:
    """The columns beyond path,label,speaker,gender,split: speaker-level ones as {speaker: value}, the others
    with an example of a speaker whose value varies."""
    per_speaker, varying = {}, {}
    for column in (c for c in table.columns if c not in KNOWN):
        example = speaker_level(table, column)
        if example is None:
            per_speaker[column] = dict(sorted(zip(table["speaker"], table[column])))
        else:
            varying[column] = example
    return per_speaker, varying


def manifest_corpus(manifest: Path, name: str, num_folds: int, labels: list[str] | None) -> ManifestCorpus:
    """The corpus description, its items and extra columns; rows with labels outside --labels are left out."""
    check_name(name)
    table = read_manifest(manifest)
    check_duplicates(table, manifest)
    if "gender" in table.columns and (example := speaker_level(table, "gender")):
        raise TrustSerError(f"manifest {manifest}: a speaker with more than one gender ({example}); gender is one "
                            f"value per speaker")
    names = class_names(table["label"], labels, manifest)
    table = keep_labels(table, names, manifest)
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
    return ManifestCorpus(corpus, items, *extra_columns(table))


def corpus_description(corpus: ManifestCorpus, manifest: Path) -> dict:
    return {**asdict(corpus.corpus), "manifest": str(manifest.resolve()), "speaker_columns": corpus.speaker_columns,
            "utterance_columns": corpus.utterance_columns}


def speaker_column(project_dir: str | Path, dataset: str, column: str) -> dict[str, str]:
    """speaker -> value of a speaker-level extra column of a manifest corpus (for --group_by)."""
    if dataset in CORPORA:
        raise TrustSerError(f"--group_by {column}: {dataset} is a built-in corpus; its groups are speaker and gender "
                            f"(other columns come from a manifest corpus)")
    path = corpus_path(project_dir, dataset)
    description = json.loads(path.read_text())
    if column in description.get("utterance_columns", {}):
        raise TrustSerError(f"--group_by {column}: column '{column}' of manifest {description['manifest']} varies "
                            f"within a speaker ({description['utterance_columns'][column]}); fairness groups need "
                            f"one value per speaker")
    columns = description.get("speaker_columns", {})
    if column not in columns:
        raise TrustSerError(f"--group_by {column}: manifest {description['manifest']} has no column '{column}' "
                            f"(its extra columns: {', '.join(columns) or 'none'}; speaker and gender are always "
                            f"there; rerun train_split_gen/manifest.py after adding one)")
    return columns[column]
