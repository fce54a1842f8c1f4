"""Shared by the stage scripts: logging, the models of a run, their feature source, results files."""
import logging
import shlex
import sys
from argparse import ArgumentParser, Namespace
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import torch
from filelock import FileLock

from model.backbones import build_backbone, check_backbone_name, weights_identity
from model.heads import CNNSelfAttention
from utils.runs.cli import parse_folds
from utils.core.config import REPO_ROOT, config_flag, load_config
from utils.data.corpora import Corpus, get_corpus
from utils.core.errors import TrustSerError
from utils.features.budget import feature_budgets
from utils.features.cache import CachedFeatures, LastLayerFeatures
from utils.features.source import AudioBank, FeatureSource, LiveFeatures
from utils.core.io import as_saved, load_torch, read_json, write_json
from utils.training.metrics import folds_with_values, mean_std
from utils.data.layout import cache_dir, splits_fingerprint
from utils.training.protocol import (apply_to_backbone, backbone_finetune, crop_seconds, fold_ids, head_shape,
                                     protocol_of, protocol_source)
from utils.runs.identity import IDENTITY, RunConfig, record_differences, run_record
from utils.runs.paths import RunFolder, RunId, finetune_dir, finetune_folder, model_and_run
from utils.runs.stages import TrustStage, Variant

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

    @cached_property
    def record(self) -> dict:
        """This run's run.json."""
        run = self.run
        return run_record(run, weights_identity(run.pretrain_model, run.pretrain_path, run.random_init, run.tiny),
                          splits_fingerprint(self.project_dir, run.dataset, self.fold_ids))


def start_stage(parser: ArgumentParser, default_folds: str | None = None, argv: list[str] | None = None) -> Stage:
    """Parse flags (a finetune run's identity from its run.json with --run), set up logging, read the config and
    check dataset, backbone and folds before any work."""
    args = parser.parse_args(argv)
    setup_logging()
    config = load_config(args.config)
    if getattr(args, "run", None):
        flags_of_run(args, parser, config["project_dir"], config["_path"])
    corpus = get_corpus(args.dataset, config["project_dir"])
    check_backbone_name(args.pretrain_model, args.pretrain_path)  # fails before any file is read or written
    run = RunConfig.from_args(args)
    all_folds = fold_ids(run, corpus)
    return Stage(args, run, config, corpus, parse_folds(args.folds or default_folds, all_folds), all_folds)


def flags_of_run(args: Namespace, parser: ArgumentParser, project_dir: str, config_path: str) -> None:
    """--run: the identity flags from the run folder's run.json (a folder path, or MODEL/RUN under
    finetune/<--dataset>, as the trust profile names runs); a flag given as well must agree with it."""
    given = Path(args.run).expanduser()
    folder = given if given.is_dir() else finetune_dir(project_dir, RunId(args.dataset, *_model_run(args.run)))
    if not folder.is_dir():
        raise TrustSerError(f"--run {args.run}: no such run folder ({folder})")
    record = RunFolder(folder).record
    if not record.is_file():
        raise TrustSerError(f"--run {args.run}: {record} not found (a run of an earlier version); pass its flags "
                            f"instead of --run")
    stored = read_json(record).get("identity", {})
    for flag in IDENTITY:
        value = getattr(args, flag.name)
        if value != parser.get_default(flag.name) and flag.canonical(value) != stored.get(flag.name):
            raise TrustSerError(f"--{flag.name} {value} contradicts --run {args.run}, whose run.json says "
                                f"{stored.get(flag.name)!r}; leave the flag out")
        setattr(args, flag.name, stored.get(flag.name, value))
    expected = finetune_dir(project_dir, RunConfig.from_args(args))
    if expected.resolve() != folder.resolve():
        raise TrustSerError(f"--run {args.run}: {_where_the_run_is(folder.resolve(), expected)}; the config file "
                            f"{config_path} has project_dir {project_dir}")


def _where_the_run_is(folder: Path, expected: Path) -> str:
    """Where the project of a run folder is (<project_dir>/finetune/<dataset>/<model>/<run>), to name in an error."""
    if folder.parts[-4:] == expected.parts[-4:]:
        return f"the run lies in project_dir {folder.parents[3]}; pass --config with that project_dir"
    return (f"its run.json describes the run {'/'.join(expected.parts[-4:])} under a project_dir, which this folder "
            f"is not (a run folder keeps its name and place)")


def _model_run(spec: str) -> tuple[str, str]:
    if (parsed := model_and_run(spec)) is None:
        raise TrustSerError(f"--run {spec}: neither a run folder nor MODEL/RUN (a run under finetune/<dataset>)")
    return parsed


def take_folder(stage: Stage, folder: RunFolder) -> None:
    """Before a stage resumes, skips or aggregates the folds in `folder`: its run.json must describe this run.
    Another run's folder is refused, unless --overwrite (which deletes that run's fold files); a folder an earlier
    version wrote (no run.json) is read with a warning. A stage records the run (start_folder) before it writes
    fold files."""
    if folder.record.is_file():
        differences = record_differences(read_json(folder.record), stage.record)
        if differences and not stage.run.overwrite:
            raise TrustSerError(f"{folder.record} describes another run ({'; '.join(differences)}); pass --overwrite "
                                f"to replace it (its fold files are deleted), or run with its flags")
        if differences:
            log.warning(f"--overwrite: deleting the fold files of another run in {folder.path} ({'; '.join(differences)})")
            for path in [*folder.fold_files(), folder.results]:
                path.unlink(missing_ok=True)
    elif folder.fold_files() or folder.results.is_file():
        _warn_unrecorded(folder)


def start_folder(stage: Stage, folder: RunFolder) -> None:
    """run.json, as the stage starts writing fold files into `folder`."""
    write_json(folder.record, stage.record)


def trained_folder(stage: Stage, same_splits: bool = True, every_fold: bool = True) -> RunFolder:
    """The finetune run whose checkpoints an evaluation reads; checkpoints another run trained are refused, and
    with `same_splits` checkpoints trained on splits that train_split/ no longer holds. `every_fold`: each fold of
    --folds must be trained (checked before any is evaluated; not for --aggregate_only)."""
    folder = finetune_folder(stage.project_dir, stage.run)
    if folder.record.is_file():
        differences = record_differences(read_json(folder.record), stage.record, splits=same_splits)
        if differences:
            raise TrustSerError(f"the checkpoints in {folder.path} were trained as another run ({'; '.join(differences)})"
                                f"; train this run: {finetune_command(stage.run)} --overwrite")
    elif folder.fold_files():
        _warn_unrecorded(folder)
    if every_fold and not getattr(stage.args, "aggregate_only", False):
        check_trained(stage.run, folder, stage.folds)
    return folder


def check_trained(run: RunConfig, folder: RunFolder, folds: list[int]) -> None:
    """Every fold is trained; else one line with the command that trains the others and, where some are, the
    --folds of those."""
    untrained = [fold for fold in folds if not folder.fold_finished(fold)]
    if not untrained:
        return
    trained = [fold for fold in folds if fold not in untrained]
    some = f"use the trained ones (--folds {','.join(map(str, trained))}), or " if trained else ""
    several = len(untrained) > 1
    raise TrustSerError(f"{folds_named(untrained)} of {folder.path} {'are' if several else 'is'} not trained; {some}"
                        f"train {'them' if several else 'it'} first: {finetune_command(run)} "
                        f"--folds {','.join(map(str, untrained))}")


def _warn_unrecorded(folder: RunFolder) -> None:
    log.warning(f"{folder.path} has no run.json (written by an earlier version): its flags cannot be checked")


def run_stage(stage: Stage, trust: TrustStage, evaluate: Callable[[int], dict], variant: Variant = Variant(),
              meta: dict | None = None, extra_keys: Sequence[str] = (),
              fold_meta: Callable[[dict], dict] | None = None, settings: dict | None = None) -> dict:
    """Every trust stage's skeleton; returns what it wrote last.

    A per-fold stage: evaluate(fold) becomes fold_k.json for each fold of --folds not yet finished (all with
    --overwrite, none with --aggregate_only), then results.json averages every finished fold (aggregate). A fold
    is finished once its result holds the stage's result keys and extra_keys (what this call asks for beyond the
    table, e.g. a --group_by column). A per-run stage: evaluate(first fold of --folds) becomes its one file,
    unless that exists. Either way the folder's run.json must describe this run (take_folder), and `settings`
    (the stage's own flags that change its numbers, beyond the variant its folder is named after) are saved with
    each result: a kept result made with other settings stops the stage (results.json would mix them)."""
    folder, keys = trust.folder(stage.project_dir, stage.run, variant), _keys(trust, extra_keys)
    take_folder(stage, folder)
    settings = as_saved(settings or {})
    if not trust.per_fold:
        return _run_once(stage, folder, trust.result_path(stage.project_dir, stage.run, variant), evaluate, meta,
                         settings)
    redone = stage.folds if stage.run.overwrite and not stage.args.aggregate_only else []
    _check_settings(folder, [f for f in stage.fold_ids if f not in redone], settings)
    if not stage.args.aggregate_only:
        todo = [fold for fold in stage.folds
                if stage.run.overwrite or not trust.holds(folder.fold_result(fold), keys)]
        announce_folds(folder, [fold for fold in stage.folds if fold not in todo], todo, "evaluated")
        for fold in todo:
            start_folder(stage, folder)
            fold_json = evaluate(fold)
            result = folder.result_of(fold_json)
            if not trust.holds(result, keys):
                raise ValueError(f"the {trust.key} stage's fold result lacks some of {keys}")
            result["settings"] = settings
            write_json(folder.fold_json(fold), fold_json)
    return aggregate(stage, trust, variant, meta, extra_keys, fold_meta)


def announce_folds(folder: RunFolder, skipped: list[int], todo: list[int], done: str) -> None:
    """One line for the folds skipped, one for each fold done again because its file is damaged."""
    if skipped:
        log.info(f"{folds_named(skipped)}: already {done} in {folder.path}, skipping (--overwrite to redo)")
    for fold in todo:
        if why := folder.damage(fold):
            log.warning(f"{why}: fold {fold} is done again")


def folds_named(folds: list[int]) -> str:
    """"fold 3", "folds 1, 2, 4"."""
    return f"fold {folds[0]}" if len(folds) == 1 else f"folds {', '.join(map(str, folds))}"


def _check_settings(folder: RunFolder, folds: list[int], settings: dict) -> None:
    """The kept fold results must have been made with these settings (results without any are older: read)."""
    made = {fold: result["settings"] for fold in folds
            if isinstance(result := folder.fold_result(fold), dict) and "settings" in result}
    other = {fold: kept for fold, kept in made.items() if kept != settings}
    if other:
        fold, kept = next(iter(other.items()))
        which = f"{folder.fold_json(fold)} was" if len(other) == 1 else \
            f"{folder.fold_json(fold)} and {len(other) - 1} other fold file(s) were"
        raise TrustSerError(f"{which} made with other settings ({_settings_differences(kept, settings)}); redo with "
                            f"--overwrite --folds {','.join(map(str, other))}, or run with those settings")


def _settings_differences(kept: dict, settings: dict) -> str:
    return "; ".join(f"{name} {kept.get(name)!r} (here {value!r})" for name, value in settings.items()
                     if kept.get(name) != value)


def _run_once(stage: Stage, folder: RunFolder, path: Path, evaluate: Callable[[int], dict], meta: dict | None,
              settings: dict) -> dict:
    if path.is_file() and (stage.args.aggregate_only or not stage.run.overwrite):
        kept = read_json(path)
        if "settings" in kept and kept["settings"] != settings:
            differences = _settings_differences(kept["settings"], settings)
            raise TrustSerError(f"{path} was made with other settings ({differences}); redo with --overwrite, or run "
                                f"with those settings")
        log.info(f"already measured: {path}, skipping (--overwrite to redo)")
        return kept
    if stage.args.aggregate_only:
        raise TrustSerError(f"nothing to aggregate: {path} is not there yet (run without --aggregate_only)")
    start_folder(stage, folder)
    result = {**evaluate(stage.folds[0]), **(meta or {}), **run_flags(stage.run), "settings": settings}
    write_json(path, result)
    return result


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrustSerError(f"--device {name} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TrustSerError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrustSerError(f"--device {name} requested but MPS is not available; use --device cpu")
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
    with --finetune unfrozen (the evaluation source of a trainable backbone). --no_cache recomputes on every batch
    (the original's per-epoch recomputation) what the cache would hold, rounded as it rounds it: the frozen
    backbone live, or the last layer's inputs through the evaluation source, a cache that keeps nothing."""
    audio = AudioBank(crop_seconds(run, backbone), run.skip_bad)
    last_layer_only = (grad_backbone and run.finetune == "unfrozen_last_layer"
                       and backbone.supports_last_layer_split)
    if grad_backbone and (run.no_cache or not last_layer_only):
        return protocol_source(run, backbone, evaluation_source(run, backbone, audio, device), device)
    if run.no_cache:
        return protocol_source(run, backbone, LiveFeatures(backbone, audio, device, round_like_cache=True), device)
    memory, disk = feature_budgets(run.cache_gb, run.memory_gb, device, cache_dir(project_dir))
    store = LastLayerFeatures if last_layer_only else CachedFeatures
    return protocol_source(run, backbone, store(backbone, audio, device, run.eval_batch_size, cache_dir(project_dir),
                                                memory, disk), device)


def evaluation_source(run: RunConfig, backbone, audio: AudioBank, device: torch.device) -> FeatureSource:
    """The source a trained fold's test split was scored through, keeping nothing: a padded batch of waveforms goes
    through its own pass and finishing step (fetch_waveforms, then finish), so other audio rounds as the test split
    did: fp16 hidden states of a frozen backbone; fp16 lower states and the live last layer with
    unfrozen_last_layer; live with unfrozen (fp32 under --protocol original)."""
    if backbone.finetune == "frozen":
        return CachedFeatures(backbone, audio, device, run.eval_batch_size, None, 0)
    if backbone.finetune == "unfrozen_last_layer" and backbone.supports_last_layer_split:
        return LastLayerFeatures(backbone, audio, device, run.eval_batch_size, None, 0)
    return LiveFeatures(backbone, audio, device, round_like_cache=False, fp32=protocol_of(run).fp32_live_evaluation)


def prepare_splits(source, splits: dict[str, list]) -> dict[str, list]:
    """Each split's readable utterances. All of them are prepared in one call first, in split order (train, dev,
    test: the most read first), so that they share the cache budgets by that order, not by which split came first."""
    source.prepare([u for utts in splits.values() for u in utts])
    return {split: source.prepare(utts) for split, utts in splits.items()}


def finetune_command(run: RunConfig) -> str:
    """The finetune command that makes the checkpoints an evaluation needs: every identity flag, those the folder
    name shows always, the others (--pretrain_path, --batch_size, --protocol, ...) where not the default."""
    cmd = [sys.executable, str(REPO_ROOT / "experiment" / "finetune_single_thread.py")]
    for flag in IDENTITY:
        value = getattr(run, flag.name)
        if isinstance(value, bool):
            cmd += [f"--{flag.name}"] if value else []
        elif flag.suffix is None or value != getattr(RunConfig, flag.name):
            cmd.append(f"--{flag.name} {shlex.quote(str(value))}")
    return " ".join(cmd) + config_flag(run.config)


def load_trained(run: RunConfig, folder: RunFolder, fold: int, device: torch.device, num_classes: int):
    """Backbone and head as finetune_single_thread.py saved them for this fold."""
    head_path = folder.head(fold)
    if not head_path.is_file():
        raise TrustSerError(f"checkpoint {head_path} not found; train it first: {finetune_command(run)} --folds {fold}")
    backbone = make_backbone(run, device)
    head = build_head(run, backbone, num_classes).to(device)
    retrain = f"; to train the fold again: {finetune_command(run)} --overwrite --folds {fold}"
    load_state(head, head_path, retrain)
    if backbone.finetune != "frozen":
        backbone_path = folder.backbone(fold)
        load_state(backbone, backbone_path, retrain, strict=False)
        st = backbone_path.stat()
        backbone.weights_id += f"+finetuned:{backbone_path}:{st.st_size}:{st.st_mtime_ns}"   # its own feature cache
    backbone.eval()
    head.eval()
    return backbone, head


def load_state(module: torch.nn.Module, path: Path, remedy: str = "", strict: bool = True) -> None:
    """Weights saved by this project; strict=False: the file may hold a subset (the trained part), never
    weights the module does not have. `remedy`: what to do about a file that cannot be used, said after why."""
    try:
        _load_state(module, path, strict)
    except TrustSerError as err:
        raise TrustSerError(f"{err}{remedy}") from None


def _load_state(module: torch.nn.Module, path: Path, strict: bool) -> None:
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


def aggregate(stage: Stage, trust: TrustStage, variant: Variant = Variant(), meta: dict | None = None,
              extra_keys: Sequence[str] = (), fold_meta: Callable[[dict], dict] | None = None,
              summary: Callable[[dict], dict] | None = None) -> dict:
    """results.json from every finished fold (one whose result holds the stage's result keys): per fold results,
    the average and std of each result key and of extra_keys where folds have it, and meta (the run's flags,
    `meta`, fold_meta(per fold results), the folds done, and under value_folds the folds each average rests on).

    Folds may finish in separate processes at the same time (--folds k): each writes its fold file first,
    then aggregates under an exclusive lock, so the last to aggregate sees every finished fold.
    summary(per_fold): may add values to each fold's entry (averaged too when extra_keys names them) and returns
    entries over all folds for results.json (e.g. pooled over the folds' test sets)."""
    folder, keys = trust.folder(stage.project_dir, stage.run, variant), _keys(trust, extra_keys)
    with _exclusive(folder.lock):
        per_fold = {str(fold): result for fold in stage.fold_ids
                    if trust.holds(result := folder.fold_result(fold), trust.result_keys)}
        if not per_fold:
            started = _started(folder, stage.fold_ids)
            raise TrustSerError(f"no finished folds in {folder.path}; nothing to aggregate{started}")
        pooled = summary(per_fold) if summary else {}
        avg, std = mean_std(per_fold, keys)
        results = {**per_fold, **pooled, "average": avg, "std": std,
                   "meta": {**run_flags(stage.run), **(meta or {}), **(fold_meta(per_fold) if fold_meta else {}),
                            "folds_done": sorted(int(f) for f in per_fold),
                            "folds_missing": [f for f in stage.fold_ids if str(f) not in per_fold],
                            "value_folds": folds_with_values(per_fold, keys)}}
        write_json(folder.results, results)
    return results


def _started(folder: RunFolder, folds: list[int]) -> str:
    """Whether a task of the run ran and failed, for the aggregation to tell it from one never submitted."""
    started = [f for f in folds if folder.fold_files(f)]
    if started:
        return f" (started but unfinished: fold{'s' if len(started) > 1 else ''} {', '.join(map(str, started))})"
    return " (started but unfinished: run.json, no fold file)" if folder.record.is_file() else ""


def _keys(trust: TrustStage, extra_keys: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*trust.result_keys, *extra_keys]))


@contextmanager
def _exclusive(lock_path: Path):
    """A lock held by one process at a time."""
    if not lock_path.parent.is_dir():
        yield       # nothing there to aggregate; aggregate() says so
        return
    with FileLock(str(lock_path)):
        yield
