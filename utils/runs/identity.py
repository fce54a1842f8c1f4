"""The typed description of a run that every library function takes: what defines it (its folder, its results)
and how it is executed. Stage scripts parse their flags into it; the benchmark and tests build it directly.

IDENTITY is the one list of the flags that change a number of a run: the run folder's name shows each (utils/runs/
paths.py), run.json records them, the fix-it finetune command repeats them and --run reads them back."""
import hashlib
import importlib.metadata
import subprocess
from argparse import Namespace
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from utils.core.config import REPO_ROOT
from utils.core.io import saved_number


def default_device() -> str:
    """cuda where available, else cpu. torch is imported here, not with the module: the readers of finished
    runs (trust profile, report) name runs without it."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class RunConfig:
    # what the run is: the IDENTITY flags below
    dataset: str = "iemocap"
    pretrain_model: str = "wav2vec2_0"
    pretrain_path: str | None = None
    random_init: bool = False
    tiny: bool = False
    finetune: str = "frozen"
    downstream_model: str = "cnn"
    learning_rate: float = 0.0002
    num_epochs: int = 50
    conv_layers: int = 3
    hidden_size: int = 256
    pooling: str = "att"
    audio_duration: int = 6
    batch_size: int = 64
    protocol: str = "fixed"      # utils/training/protocol.py: "original" reproduces the original's procedure
    # how it is executed (the same numbers whatever these are; does not change its folder)
    seeds: int | None = None    # runs over a one-split corpus (run k = fold k, seed 8k); None: the protocol's
    config: str | None = None
    eval_batch_size: int = 32
    device: str = field(default_factory=default_device)
    no_cache: bool = False
    cache_gb: float | None = None       # disk the feature cache may take (default: from free space)
    memory_gb: float | None = None      # host/GPU memory holding features (default: from free memory)
    skip_bad: bool = False
    overwrite: bool = False

    @classmethod
    def from_args(cls, args: Namespace) -> "RunConfig":
        """The run a stage script's parsed flags describe (stage-specific flags are left out)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def but(self, **changes) -> "RunConfig":
        return replace(self, **changes)

    def defining_flags(self) -> dict:
        """The IDENTITY flags, as given (results.json's meta records them)."""
        values = asdict(self)
        return {flag.name: values[flag.name] for flag in IDENTITY}

    def identity(self) -> dict:
        """The IDENTITY flags as run.json records and compares them: local paths resolved, floats as stored."""
        return {flag.name: flag.canonical(value) for flag, value in zip(IDENTITY, self.defining_flags().values())}


def path_hash(path: str) -> str:
    """8 hex digits naming a local path (resolved: the same folder, however it is spelled)."""
    return hashlib.sha1(str(Path(path).expanduser().resolve()).encode()).hexdigest()[:8]


def _canonical_path(value: str | None) -> str | None:
    return str(Path(value).expanduser().resolve()) if value and Path(value).expanduser().exists() else value


def _stored_float(value: float) -> float:
    return float(saved_number(value))


@dataclass(frozen=True)
class Flag:
    name: str
    # the folder name's suffix where the value is not the default; None: the name shows it already (the folder
    # path: dataset and backbone; the original's part of the name: learning rate ... finetune mode)
    suffix: Callable[[object], str] | None = None
    canonical: Callable[[object], object] = lambda value: value


IDENTITY: list[Flag] = [
    Flag("dataset"), Flag("pretrain_model", canonical=_canonical_path),
    Flag("learning_rate", canonical=_stored_float), Flag("num_epochs"), Flag("downstream_model"),
    Flag("conv_layers"), Flag("hidden_size"), Flag("pooling"), Flag("finetune"),
    # the suffixes, in the order they join the name (the first four as earlier versions named them)
    Flag("audio_duration", lambda v: f"_ad{v}"),
    Flag("tiny", lambda v: "_tiny"),
    Flag("random_init", lambda v: "_randinit"),
    Flag("protocol", lambda v: f"_{v[:4]}proto"),
    Flag("batch_size", lambda v: f"_bs{v}"),
    Flag("pretrain_path", lambda v: f"_pp{path_hash(v)}", canonical=_canonical_path),
]
IDENTITY_NAMES = [flag.name for flag in IDENTITY]
ORIGINAL_ONLY = "accepted for the original's command lines; unused there too"
# every other flag of utils/runs/cli.py's base_parser, and why it changes no number of the run
NOT_IDENTITY = {
    "config": "where the corpora and project_dir are",
    "num_layers": ORIGINAL_ONLY,
    "norm": ORIGINAL_ONLY,
    "optimizer": "one choice (adam)",
    "eval_batch_size": "padding never changes a clip's hidden states or scores (model/backbones)",
    "folds": "which folds of the run to do now",
    "seeds": "how many seeded runs of a one-split corpus there are (run k's numbers depend on k only)",
    "device": "where it runs",
    "no_cache": "what the cache would hold is recomputed on every batch, rounded as the cache rounds it",
    "cache_gb": "what the feature cache keeps, not what it computes",
    "memory_gb": "what the feature cache keeps, not what it computes",
    "skip_bad": "without it a bad file stops the run; with it the skipped files are counted in the results",
    "overwrite": "redo, not do differently",
    "aggregate_only": "redo results.json only",
    "run": "names a run whose identity is read from its run.json",
}


def folder_suffixes(run: RunConfig) -> str:
    """The run folder name's suffixes: one per IDENTITY flag not at its default that the name shows no other way."""
    return "".join(flag.suffix(getattr(run, flag.name)) for flag in IDENTITY
                   if flag.suffix and getattr(run, flag.name) != getattr(RunConfig, flag.name))


def run_record(run: RunConfig, weights: str, splits: str | None = None) -> dict:
    """run.json: what the run is (its identity flags, the weights its backbone starts from and the fingerprint of
    its splits: utils/data/utterances.py), and what it ran with (the project's commit, library versions), which is
    recorded but never compared."""
    return {"identity": run.identity(), "weights": weights, **({"splits": splits} if splits else {}),
            "protocol": run.protocol, **({"commit": commit} if (commit := git_commit()) else {}),
            "versions": versions()}


def record_differences(record: dict, expected: dict, splits: bool = True) -> list[str]:
    """The identity flags (and "weights", and with `splits` the splits) in which run.json `record` differs from
    `expected`, as 'name A (here B)'. A flag the record lacks (added to IDENTITY after it was written) had its
    default then; splits are compared where both records have them."""
    have = {**RunConfig().identity(), **record.get("identity", {}), "weights": record.get("weights")}
    want = {**expected["identity"], "weights": expected["weights"]}
    differences = [f"{name} {have.get(name)!r} (here {value!r})" for name, value in want.items()
                   if have.get(name) != value]
    if splits and None not in (record.get("splits"), expected.get("splits")) and record["splits"] != expected["splits"]:
        differences.append("its train/dev/test splits, which train_split/ no longer holds")
    return differences


def git_commit() -> str | None:
    """The project's git commit, where it is a git checkout with git installed."""
    try:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def versions() -> dict:
    import torch
    found = {"torch": torch.__version__}
    try:
        found["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        pass
    return found
