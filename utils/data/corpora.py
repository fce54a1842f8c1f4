"""What each corpus is: its label map, its folds, how its preprocessed files are named."""
import json
from dataclasses import dataclass, fields
from pathlib import Path, PurePath

from utils.core.config import config_flag
from utils.core.errors import TrustSerError


@dataclass(frozen=True)
class Corpus:
    name: str
    label_map: dict          # raw corpus label -> class index (labels not listed are dropped)
    class_names: list
    num_folds: int           # 0: one official split in <name>.json
    speaker_in_audio_name: bool = False   # RAVDESS reuses file names across actors
    keyed_audio_names: bool = False       # manifest corpora: preprocessed files named by the entry's unique key
    files_of: str | None = None   # a subset of another corpus: its split files and preprocessed audio
    key_contains: str = ""        # only entries whose key contains this (IEMOCAP's improvised sessions: "impro")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fold_ids(self, runs: int = 1) -> list[int]:
        """The folds; a corpus with one official split has `runs` runs over it instead, numbered as folds
        (run k reads <name>.json as a fold would, seeded as fold k: utils/training/protocol.py)."""
        return list(range(1, (self.num_folds or runs) + 1))


# seeded runs over a one-split corpus by protocol: the original looped folds 1-5 over msp-podcast.json
SINGLE_SPLIT_RUNS = {"fixed": 1, "original": 5}
_NASH = {"N": 0, "A": 1, "S": 2, "H": 3}
CORPORA: dict[str, Corpus] = {c.name: c for c in [
    Corpus("iemocap", {"neu": 0, "sad": 1, "ang": 2, "exc": 3, "hap": 3}, ["neu", "sad", "ang", "hap"], 5),
    Corpus("crema_d", _NASH, ["N", "A", "S", "H"], 5),
    Corpus("msp-improv", _NASH, ["N", "A", "S", "H"], 6),
    Corpus("msp-podcast", _NASH, ["N", "A", "S", "H"], 0),
    Corpus("meld", {"neutral": 0, "anger": 1, "sadness": 2, "joy": 3}, ["neutral", "anger", "sadness", "joy"], 0),
    # RAVDESS emotion codes 01..08; calm (02) merged into neutral (01)
    Corpus("ravdess", {1: 0, 2: 0, 3: 1, 4: 2, 5: 3, 6: 4, 7: 5, 8: 6},
           ["neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised"], 5, speaker_in_audio_name=True),
    # as the original's dataloader defined them: IEMOCAP's improvised sessions, CREMA-D's six emotions
    Corpus("iemocap_impro", {"neu": 0, "sad": 1, "ang": 2, "exc": 3, "hap": 3}, ["neu", "sad", "ang", "hap"], 5,
           files_of="iemocap", key_contains="impro"),
    Corpus("crema_d_complete", {**_NASH, "F": 4, "D": 5}, ["N", "A", "S", "H", "F", "D"], 5, files_of="crema_d"),
    # the built-in synthetic corpus (utils/data/synthetic.py)
    Corpus("demo", {"neu": 0, "sad": 1, "ang": 2, "hap": 3}, ["neu", "sad", "ang", "hap"], 5),
]}


def corpus_path(project_dir: str | Path, dataset: str) -> Path:
    """A manifest corpus' description (train_split_gen/manifest.py)."""
    return Path(project_dir) / "train_split" / f"{dataset}.corpus.json"


_MANIFEST_CORPORA: dict[str, Corpus] = {}  # the last description read; later lookups by name need no project_dir


def get_corpus(name: str, project_dir: str | Path | None = None) -> Corpus:
    """A built-in corpus, or one that train_split_gen/manifest.py described under project_dir (read anew each
    time project_dir is given: one process may see several projects, or a description rewritten)."""
    if name in CORPORA:
        return CORPORA[name]
    if project_dir is not None:
        path = corpus_path(project_dir, name)
        _MANIFEST_CORPORA.pop(name, None)
        if path.is_file():
            try:  # not utils.core.io.read_json: a damaged description gets its own hint (rerun manifest.py)
                description = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise TrustSerError(f"corpus description {path} is unreadable ({err}); rerun "
                                    f"train_split_gen/manifest.py") from None
            _MANIFEST_CORPORA[name] = Corpus(**{f.name: description[f.name] for f in fields(Corpus)
                                                if f.name in description})
    if name not in _MANIFEST_CORPORA:
        raise TrustSerError(f"unknown --dataset '{name}'; valid names: {', '.join(CORPORA)}, or a corpus written "
                            f"by train_split_gen/manifest.py into this config's project_dir")
    return _MANIFEST_CORPORA[name]


def files_name(dataset: str) -> str:
    """The name the corpus' split files and preprocessed audio folder carry (a subset reads its parent's)."""
    return get_corpus(dataset).files_of or dataset


def split_command(dataset: str, config: str | None = None) -> str:
    """The command that writes the corpus' split files (its script is named as the corpus, with '-' for '_'),
    with --config when the user gave one."""
    name = files_name(dataset)
    if name not in CORPORA:
        return f"python3 train_split_gen/manifest.py --manifest YOUR.csv --dataset {name}{config_flag(config)}"
    return (f"python3 train_split_gen/{name.replace('_', '-')}.py" + (" --generate" if name == "demo" else "")
            + config_flag(config))


def split_file_name(dataset: str, fold: int) -> str:
    """train_split/<name>_fold<k>.json, or <name>.json for corpora with one official split."""
    name = files_name(dataset)
    return f"{name}_fold{fold}.json" if get_corpus(dataset).num_folds else f"{name}.json"


def preprocessed_name(dataset: str, entry: list, split: str) -> str:
    """File name under <project_dir>/audio/<dataset>/ for one split entry [key, speaker, gender, path, label].

    As the original, except MELD keeps its split in the name: it reuses dia0_utt0.wav across
    train/dev/test, which the original silently overwrote.
    """
    base = PurePath(str(entry[3]).replace("\\", "/")).name
    if get_corpus(dataset).keyed_audio_names:
        return f"{entry[0]}.wav"
    if get_corpus(dataset).speaker_in_audio_name:
        return f"{entry[1]}_{base}"
    if dataset == "meld":
        return f"{split}_{base}"
    return base
