"""Train the head (and unfrozen backbone layers) for one fold, resumable after every epoch."""
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from utils.data.utterances import Utterance, class_weights
from utils.core.errors import TrustSerError
from utils.core.io import load_torch, save_torch, write_csv, write_json
from utils.training.pipeline import announce_folds, build_head, trainable_backbone_state
from utils.training.protocol import protocol_of
from utils.runs.identity import RunConfig
from utils.runs.paths import RunFolder
from utils.training.loop import EvalResult, evaluate, evaluate_heads, make_optimizer, set_seed, train_epoch

log = logging.getLogger("trust-ser")


def folds_to_train(folder: RunFolder, folds: list[int], overwrite: bool) -> list[int]:
    """The folds not finished (all of them with --overwrite); the others are logged as skipped."""
    todo = [f for f in folds if overwrite or not folder.fold_finished(f)]
    announce_folds(folder, [f for f in folds if f not in todo], todo, "finished")
    return todo


def write_predictions(path: Path, result: EvalResult, class_names: list[str]) -> None:
    """One row per test utterance: key, speaker, gender, label and prediction (class names, as predict.py writes
    them), then the class probabilities."""
    header = ["key", "speaker", "gender", "label", "prediction", *(f"prob_{name}" for name in class_names)]
    write_csv(path, [header, *([u.key, u.speaker, u.gender, class_names[u.label], class_names[int(pred)],
                                *(f"{p:.6f}" for p in probs)]
                               for u, pred, probs in zip(result.utterances, result.predictions, result.probabilities))])


@dataclass(frozen=True)
class FitSpec:
    """What a head is trained for: emotions (finetune) or speaker gender (privacy)."""
    class_names: list
    learning_rate: float
    num_epochs: int
    class_weighted: bool
    # what the fold's result holds besides the scores, from the best head's test result (privacy: "collapsed")
    annotate: Callable[[EvalResult], dict] = lambda test: {}


def train_fold(run: RunConfig, fold: int, data: dict[str, list[Utterance]], backbone: nn.Module, source,
               folder: RunFolder, device: torch.device, spec: FitSpec) -> dict:
    """Best epoch by dev UAR; writes fold_k.pt (+ fold_k_backbone.pt), fold_k.json and test predictions.

    With a frozen backbone the test split is scored once, after the last epoch, by every epoch's head (kept in
    fold_k_epoch_e_head.pt until then): the same scores as after each epoch, for one pass over the test features
    instead of one per epoch (the costly part where a bounded cache computes them live)."""
    num_classes = len(spec.class_names)
    set_seed(8 * fold)
    head = build_head(run, backbone, num_classes).to(device)
    params = list(head.parameters()) + [p for p in backbone.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(params, spec.learning_rate)
    weights = class_weights(data["train"], num_classes) if spec.class_weighted else None
    criterion = nn.NLLLoss(weights.to(device) if weights is not None else None)
    generator = torch.Generator().manual_seed(8 * fold)
    uar_classes = protocol_of(run).uar_classes
    test_after_training = not any(p.requires_grad for p in backbone.parameters())
    state = {"epoch": 0, "history": {}, "best": None, "best_head": None, "best_backbone": None}
    last_path = folder.last(fold)
    if run.overwrite:
        last_path.unlink(missing_ok=True)
    for stale in folder.partial_writes(fold):   # left by a process killed mid-write; this fold is ours
        stale.unlink(missing_ok=True)
    if last_path.is_file():
        state = _resume(last_path, head, backbone, optimizer, scheduler, generator)
        # epochs count from 0 in the logs: state["epoch"] finished ones end with epoch state["epoch"] - 1
        log.info(f"fold {fold}: resuming after epoch {state['epoch'] - 1} from {last_path}")

    for epoch in range(state["epoch"], spec.num_epochs):
        train_res = train_epoch(head, backbone, source, data["train"], criterion, optimizer, run.batch_size,
                                generator, num_classes, uar_classes)
        dev = evaluate(head, backbone, source, data["dev"], run.eval_batch_size, num_classes, uar_classes)
        scheduler.step(dev.loss)
        entry = state["history"][str(epoch)] = {"train": train_res, "dev": dev.summary()}
        if test_after_training:
            save_torch(folder.epoch_head(fold, epoch), head.state_dict())
            test_line = ""
        else:
            test = evaluate(head, backbone, source, data["test"], run.eval_batch_size, num_classes, uar_classes)
            entry["test"] = test.summary()
            test_line = f"test UAR {test.scores['uar']:.2f}% | "
        entry["lr"] = optimizer.param_groups[0]["lr"]
        if state["best"] is None or dev.scores["uar"] > state["best"]["dev_uar"]:
            state["best"] = {"epoch": epoch, "dev_uar": dev.scores["uar"], "dev_acc": dev.scores["acc"]}
            state["best_head"] = copy.deepcopy(head.state_dict())
            state["best_backbone"] = copy.deepcopy(trainable_backbone_state(backbone))
            save_torch(folder.head(fold), state["best_head"])
        log.info(f"fold {fold} epoch {epoch}: train loss {train_res['loss']:.3f} UAR {train_res['uar']:.2f}% | "
                 f"dev UAR {dev.scores['uar']:.2f}% | {test_line}"
                 f"best epoch {state['best']['epoch']} (dev UAR {state['best']['dev_uar']:.2f}%)")
        state["epoch"] = epoch + 1
        write_json(folder.fold_json(fold), state["history"])
        _save_resume(last_path, state, head, backbone, optimizer, scheduler, generator)

    return _finish_fold(run, fold, data, backbone, source, folder, spec, head, state, test_after_training)


def reported_scores(run: RunConfig, test_scores: dict, best_dev_uar: float) -> dict:
    """The fold's test UAR, ACC and macro-F1; under --protocol original 0 when no epoch's dev UAR exceeded 0: the
    original's best started at 0 and only a higher dev UAR saved an epoch, so it reported its initial 0s."""
    scores = {k: test_scores[k] for k in ("uar", "acc", "macro_f1")}
    if protocol_of(run).best_needs_dev_uar_above_0 and best_dev_uar <= 0:
        log.warning("no epoch had a dev UAR above 0: reporting test UAR and ACC 0, as the original (which saved no "
                    "checkpoint; this fold's checkpoint is the first epoch's)")
        return {**{k: 0.0 for k in scores}, "no_epoch_above_0": True}
    return scores


def _finish_fold(run, fold, data, backbone, source, folder: RunFolder, spec: FitSpec, head, state,
                 test_after_training) -> dict:
    class_names = spec.class_names
    eval_batch_size, uar_classes = run.eval_batch_size, protocol_of(run).uar_classes
    head.load_state_dict(state["best_head"])
    if state["best_backbone"]:
        backbone.load_state_dict(state["best_backbone"], strict=False)
        save_torch(folder.backbone(fold), state["best_backbone"])
    if test_after_training:
        test = _score_epoch_heads(fold, data["test"], backbone, source, folder, head, state, eval_batch_size,
                                  len(class_names), uar_classes)
    else:
        test = evaluate(head, backbone, source, data["test"], eval_batch_size, len(class_names), uar_classes)
    write_predictions(folder.predictions(fold), test, class_names)
    result = {**reported_scores(run, test.scores, state["best"]["dev_uar"]),
              "dev_uar": state["best"]["dev_uar"], "dev_acc": state["best"]["dev_acc"],
              "best_epoch": state["best"]["epoch"], "num_test": len(data["test"]),
              "weights": backbone.weights_id, "skipped_bad_audio": len(source.audio.bad), **spec.annotate(test)}
    write_json(folder.fold_json(fold), {**state["history"], "best": result})
    folder.last(fold).unlink(missing_ok=True)
    for epoch_head in folder.epoch_heads(fold):
        epoch_head.unlink()
    log.info(f"fold {fold} done: best epoch {result['best_epoch']}, test UAR {result['uar']:.2f}%, "
             f"ACC {result['acc']:.2f}%")
    return result


def _score_epoch_heads(fold, test_utts, backbone, source, folder: RunFolder, head, state, eval_batch_size,
                       num_classes, uar_classes) -> EvalResult:
    """Every epoch's test scores into the history, from its saved head; the best epoch's result."""
    heads = []
    for epoch in range(state["epoch"]):
        path = folder.epoch_head(fold, epoch)
        try:
            heads.append(copy.deepcopy(head))
            heads[-1].load_state_dict(load_torch(path))
        except (TrustSerError, RuntimeError) as err:
            raise TrustSerError(f"cannot score the test split with epoch {epoch}'s head ({err}); pass --overwrite "
                                f"to train fold {fold} again") from None
    results = evaluate_heads(heads, backbone, source, test_utts, eval_batch_size, num_classes, uar_classes)
    for epoch, result in enumerate(results):
        entry = state["history"][str(epoch)]
        entry.update(test=result.summary(), lr=entry.pop("lr"))     # the key order of the per-epoch path
    return results[state["best"]["epoch"]]


def _save_resume(path, state, head, backbone, optimizer, scheduler, generator) -> None:
    save_torch(path, {**state, "head": head.state_dict(), "backbone": trainable_backbone_state(backbone),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "generator": generator.get_state(), "rng": torch.get_rng_state(),
                      # dropout on a GPU draws from its own generator
                      "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []})


def _resume(path, head, backbone, optimizer, scheduler, generator) -> dict:
    try:
        ckpt = load_torch(path)
        head.load_state_dict(ckpt["head"])
        backbone.load_state_dict(ckpt["backbone"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["rng"])
        if ckpt.get("cuda_rng") and len(ckpt["cuda_rng"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        return {k: ckpt[k] for k in ("epoch", "history", "best", "best_head", "best_backbone")}
    except (TrustSerError, RuntimeError, ValueError, KeyError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrustSerError(f"cannot resume from {path} ({reason}); delete it, or pass --overwrite, "
                            f"to train this fold from the start") from None
