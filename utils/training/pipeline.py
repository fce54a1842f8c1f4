"""Shared by the stage scripts: logging, the models of a run, their feature source, results files."""
import fcntl
import logging
import shlex
import sys
from argparse import ArgumentParser, Namespace
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from model.backbones import build_backbone, check_backbone_name
from model.heads import CNNSelfAttention
from utils.runs.cli import parse_folds
from utils.core.config import REPO_ROOT, config_flag, load_config
from utils.data.corpora import Corpus, get_corpus
from utils.core.errors import TrustSerError
from utils.features.budget import feature_budgets
from utils.features.cache import CachedFeatures, LastLayerFeatures
from utils.features.source import AudioBank, LiveFeatures
from utils.core.io import load_torch, read_json, write_json
from utils.training.metrics import mean_std, value_folds
from utils.data.layout import cache_dir
from utils.training.protocol import (apply_to_backbone, backbone_finetune, crop_seconds, fold_ids, head_shape,
                                     protocol_source)
from utils.runs.identity import RunConfig

log = logging.getLogger("trust-ser")


def setup_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)-3s ==> %(message)s", level=logging.INFO,
                        datefmt="%Y-%m-%d %H:%M:%S")


@dataclass
class Stage:
    """What every stage script starts from: its flags (all of them, and the run they describe), the config,
    the corpus and the folds to run."""
    args: Namespace
    run: RunConfig
    config: dict
    corpus: Corpus
    folds: list[int]            # the folds to run now (--folds)
    fold_ids: list[int]         # all folds of the run, as results.json aggregates them

    @property
    def project_dir(self) -> str:
        return self.config["project_dir"]


def start_stage(parser: ArgumentParser, default_folds: str | None = None, argv: list[str] | None = None) -> Stage:
    """Parse flags (argv, default: the command line), set up logging, read the config and check dataset, backbone
    and folds before any work."""
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config(args.config)
    corpus = get_corpus(args.dataset, config["project_dir"])
    check_backbone_name(args.pretrain_model, args.pretrain_path)  # fails before any file is read or written
    run = RunConfig.from_args(args)
    all_folds = fold_ids(run, corpus)
    return Stage(args, run, config, corpus, parse_folds(args.folds or default_folds, all_folds), all_folds)


def evaluate_folds(stage: Stage, out_dir: Path, evaluate_fold: Callable[[int], dict],
                   done: Callable[[Path], bool] = Path.is_file) -> None:
    """fold_k.json for each fold not yet done (all with --overwrite); nothing with --aggregate_only."""
    if stage.args.aggregate_only:
        return
    for fold in stage.folds:
        path = out_dir / f"fold_{fold}.json"
        if done(path) and not stage.run.overwrite:
            log.info(f"fold {fold}: already evaluated in {out_dir}, skipping (--overwrite to redo)")
            continue
        write_json(path, evaluate_fold(fold))


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrustSerError(f"--device {name} requested but CUDA is not available; use --device cpu")
    return device


def build_head(run: RunConfig, backbone, num_classes: int) -> CNNSelfAttention:
    conv_layers, channels = head_shape(run)
    return CNNSelfAttention(input_dim=backbone.hidden_dim, num_enc_layers=backbone.num_layers,
                            output_class_num=num_classes, hidden_dim=channels,
                            conv_layers=conv_layers, pooling_method=run.pooling)


def make_backbone(run: RunConfig, device: torch.device):
    """The backbone in the finetune mode the protocol gives it (backbone.finetune; may differ from --finetune)."""
    backbone = build_backbone(run.pretrain_model, pretrain_path=run.pretrain_path, random_init=run.random_init,
                              tiny=run.tiny, finetune=backbone_finetune(run))
    return apply_to_backbone(run, backbone).to(device)


def make_source(run: RunConfig, backbone, device: torch.device, project_dir: str, grad_backbone: bool):
    """Where the head's input comes from: cached hidden states of a frozen backbone; with --finetune
    unfrozen_last_layer, cached inputs of the last layer, which alone runs every batch; the live backbone
    with --finetune unfrozen, or with --no_cache (the original's per-epoch recomputation)."""
    audio = AudioBank(crop_seconds(run), run.skip_bad)
    last_layer_only = (grad_backbone and run.finetune == "unfrozen_last_layer"
                       and backbone.supports_last_layer_split)
    if run.no_cache or (grad_backbone and not last_layer_only):
        return protocol_source(run, backbone, LiveFeatures(backbone, audio, device, round_like_cache=not grad_backbone),
                               device)
    memory, disk = feature_budgets(run.cache_gb, run.memory_gb, device, cache_dir(project_dir))
    store = LastLayerFeatures if last_layer_only else CachedFeatures
    return protocol_source(run, backbone, store(backbone, audio, device, run.eval_batch_size, cache_dir(project_dir),
                                                memory, disk), device)


def prepare_splits(source, splits: dict[str, list]) -> dict[str, list]:
    """Each split's readable utterances. All of them are prepared in one call first, in split order (train, dev,
    test: the most read first), so that they share the cache budgets by that order, not by which split came first."""
    source.prepare([u for utts in splits.values() for u in utts])
    return {split: source.prepare(utts) for split, utts in splits.items()}


def finetune_command(run: RunConfig) -> str:
    """The finetune command that makes the checkpoints an evaluation needs: every flag that defines the run,
    the usual ones always, the others (--pretrain_path, --batch_size, --protocol, ...) where not the default."""
    always = {"dataset", "pretrain_model", "learning_rate", "downstream_model", "num_epochs", "conv_layers",
              "pooling", "hidden_size", "finetune", "audio_duration"}
    cmd = [sys.executable, str(REPO_ROOT / "experiment" / "finetune_single_thread.py")]
    for name, value in run.defining_flags().items():
        if isinstance(value, bool):
            cmd += [f"--{name}"] if value else []
        elif name in always or value != getattr(RunConfig, name):
            cmd.append(f"--{name} {shlex.quote(str(value))}")
    return " ".join(cmd) + config_flag(run.config)


def load_trained(run: RunConfig, run_dir: Path, fold: int, device: torch.device, num_classes: int):
    """Backbone and head as finetune_single_thread.py saved them for this fold."""
    head_path = run_dir / f"fold_{fold}.pt"
    if not head_path.is_file():
        raise TrustSerError(f"checkpoint {head_path} not found; train it first: {finetune_command(run)} --folds {fold}")
    backbone = make_backbone(run, device)
    head = build_head(run, backbone, num_classes).to(device)
    load_state(head, head_path)
    if backbone.finetune != "frozen":
        backbone_path = run_dir / f"fold_{fold}_backbone.pt"
        load_state(backbone, backbone_path, strict=False)
        st = backbone_path.stat()
        backbone.weights_id += f"+finetuned:{backbone_path}:{st.st_size}:{st.st_mtime_ns}"   # its own feature cache
    backbone.eval()
    head.eval()
    return backbone, head


def load_state(module: torch.nn.Module, path: Path, strict: bool = True) -> None:
    """Weights saved by this project; strict=False: the file may hold a subset (the trained part), never
    weights the module does not have."""
    state = load_torch(path)
    hint = "other --pretrain_model, --finetune, --hidden_size, --conv_layers or --pooling?"
    if not isinstance(state, dict):
        raise TrustSerError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    try:
        result = module.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise TrustSerError(f"checkpoint {path} does not fit this backbone/head ({hint}): {detail}") from None
    if result.unexpected_keys:
        raise TrustSerError(f"checkpoint {path} does not fit this backbone/head ({hint}): "
                            f"{len(result.unexpected_keys)} unknown weights, e.g. {result.unexpected_keys[0]}")


def trainable_backbone_state(backbone: torch.nn.Module) -> dict:
    names = {n for n, p in backbone.named_parameters() if p.requires_grad}
    return {k: v for k, v in backbone.state_dict().items() if k in names}


def run_flags(run: RunConfig) -> dict:
    """The flags that define a run (not where or how fast it ran), as results.json's meta records them."""
    return {"flags": run.defining_flags()}


def aggregate(out_dir: Path, folds: list[int], keys: list[str], meta: dict, pick=lambda d: d,
              summary: Callable[[dict], dict] | None = None) -> dict:
    """results.json from whatever per-fold files exist: per fold values, average and std, and under
    meta.value_folds the folds each average rests on (a value can be missing in some folds).

    Folds may finish in separate processes at the same time (--folds k): each writes its fold file first,
    then aggregates under an exclusive lock, so the last to aggregate sees every finished fold.
    summary(per_fold): may add values to each fold's entry (averaged too when `keys` names them) and returns
    entries over all folds for results.json (e.g. pooled over the folds' test sets)."""
    with _exclusive(out_dir / ".results.lock"):
        per_fold = {}
        for fold in folds:
            path = out_dir / f"fold_{fold}.json"
            result = pick(read_json(path)) if path.is_file() else None
            if result is not None:
                per_fold[str(fold)] = result
        if not per_fold:
            raise TrustSerError(f"no finished folds in {out_dir}; nothing to aggregate")
        pooled = summary(per_fold) if summary else {}
        avg, std = mean_std(per_fold, keys)
        results = {**per_fold, **pooled, "average": avg, "std": std,
                   "meta": {**meta, "folds_done": sorted(int(f) for f in per_fold),
                            "folds_missing": [f for f in folds if str(f) not in per_fold],
                            "value_folds": value_folds(per_fold, keys)}}
        write_json(out_dir / "results.json", results)
    return results


@contextmanager
def _exclusive(lock_path: Path):
    """An advisory lock held by one process at a time (flock: local disks and NFS alike on Linux)."""
    if not lock_path.parent.is_dir():
        yield       # nothing there to aggregate; aggregate() says so
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
