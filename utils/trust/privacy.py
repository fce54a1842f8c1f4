"""Privacy: how much speaker gender leaks from a trained emotion model.

Two probes:
- the original's: a 2-class CNN head trained on the backbone's hidden states (fold 1, 10 epochs, lr 5e-4, best epoch
  by dev UAR). With a small dev set it can stop at a head that predicts one gender for everything (UAR exactly
  50%, which reads as "nothing leaks"); such a fold is flagged "collapsed".
- a linear probe: logistic regression on the emotion model's own pooled utterance embedding (what its classifier
  sees), over all utterances of the fold's split file, with speaker-grouped stratified cross-validation (no speaker
  in both the training and the held-out part), so that its UAR rests on every speaker, not on a 2-speaker dev set.
"""
import dataclasses

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from utils.data.utterances import SPLITS, Utterance, length_sorted_batches, load_fold
from utils.training.finetune import FitSpec, train_fold
from utils.core.io import read_json
from utils.training.loop import EvalResult
from utils.training.metrics import classification_scores
from utils.runs.paths import RunFolder
from utils.training.pipeline import load_trained, make_source, prepare_splits
from utils.runs.identity import RunConfig
from utils.runs.stages import CLASSIFICATION_KEYS

GENDER_CLASSES = ["female", "male"]
PRIVACY_EPOCHS, PRIVACY_LR = 10, 0.0005    # the original probe's, fixed whatever the finetune flags
MAX_SPLITS = 5
PROBE_DESCRIPTION = {"features": "emotion head's pooled utterance embedding", "classifier":
                     "StandardScaler + LogisticRegression(max_iter=1000)", "cv": "StratifiedGroupKFold by speaker",
                     "ci95": "bootstrap over speakers"}


def gender_class(gender: str) -> int | None:
    g = gender.strip().lower()
    return 0 if g.startswith("f") else 1 if g.startswith("m") else None


def relabel_by_gender(utts: list[Utterance]) -> list[Utterance]:
    """The utterances of known gender, labelled 0 (female) / 1 (male)."""
    return [dataclasses.replace(u, label=gender_class(u.gender)) for u in utts if gender_class(u.gender) is not None]


def missing_gender(utts: list[Utterance]) -> str | None:
    """What keeps gender-labelled utterances from holding both genders ("every utterance is female"); None if
    nothing does."""
    present = sorted({u.label for u in utts})
    if not present:
        return "no utterance has a gender label (one starting with f or m)"
    return f"every utterance with a gender label is {GENDER_CLASSES[present[0]]}" if len(present) == 1 else None


def one_gender_splits(data: dict[str, list[Utterance]]) -> str | None:
    """Why the original probe cannot run on a fold (it trains on train, picks its epoch on dev, scores test, each
    needing both genders): e.g. "dev holds female speakers only"; None when it can."""
    lacking = []
    for split, utts in data.items():
        present = {u.label for u in utts}
        if len(present) < 2:
            lacking.append(f"{split} holds {GENDER_CLASSES[present.pop()]} speakers only" if present
                           else f"{split} has no gender labels")
    return "; ".join(lacking) or None


def collapsed(test: EvalResult) -> bool:
    """Whether a probe predicted the same class for every test utterance."""
    return len({int(p) for p in test.predictions}) == 1


@torch.no_grad()
def pooled_embeddings(head, source, utts: list[Utterance], batch_size: int) -> np.ndarray:
    """head.embed of every utterance, [N, hidden], in the order of utts."""
    head.eval()
    out = np.zeros((len(utts), head.out_layer[0].in_features), dtype=np.float64)
    for idx in length_sorted_batches([source.length(u) for u in utts], batch_size):
        hidden, mask = source.batch([utts[i] for i in idx])
        out[idx] = head.embed(hidden, mask).double().cpu().numpy()
    return out


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Gender UAR in percent over the genders present in y_true."""
    return classification_scores(y_true, y_pred, len(GENDER_CLASSES))["uar"]


def linear_probe(embeddings: np.ndarray, genders: np.ndarray, speakers: np.ndarray, n_bootstrap: int = 1000,
                 seed: int = 0) -> dict:
    """Out-of-fold UAR (%) of a logistic-regression gender classifier, folds grouped by speaker.

    Up to 5 folds, fewer when a gender has fewer speakers; a 95% CI from resampling speakers (an utterance
    resample would ignore that one speaker's utterances are alike). Without 2 speakers of each gender the
    UAR is None and "reason" says why."""
    genders, speakers = np.asarray(genders), np.asarray(speakers)
    per_gender = [len(np.unique(speakers[genders == g])) for g in (0, 1)]
    n_splits = min(MAX_SPLITS, *per_gender)
    result = {"num_utterances": len(genders), "num_speakers": len(np.unique(speakers)), "n_splits": n_splits}
    if n_splits < 2:
        return {**result, "uar": None, "ci95": None, "n_splits": 0,
                "reason": f"needs 2 speakers of each gender, has {per_gender[0]} female and {per_gender[1]} male"}
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    predicted = cross_val_predict(classifier, embeddings, genders, groups=speakers,
                                  cv=StratifiedGroupKFold(n_splits=n_splits))
    return {**result, "uar": uar(genders, predicted), "ci95": _speaker_bootstrap(genders, predicted, speakers,
                                                                                  n_bootstrap, seed), "reason": None}


def _speaker_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, speakers: np.ndarray, n: int,
                       seed: int) -> list[float] | None:
    rng = np.random.default_rng(seed)
    names = np.unique(speakers)
    rows = {name: np.flatnonzero(speakers == name) for name in names}
    samples = []
    for _ in range(n):
        pick = np.concatenate([rows[name] for name in rng.choice(names, len(names))])
        if len(np.unique(y_true[pick])) == 2:
            samples.append(uar(y_true[pick], y_pred[pick]))
    return [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))] if samples else None


def gender_probe(head, source, utts: list[Utterance], batch_size: int, n_bootstrap: int, seed: int) -> dict:
    """The linear probe on the pooled embeddings of gender-labelled utterances (label 0/1)."""
    embeddings = pooled_embeddings(head, source, utts, batch_size)
    return linear_probe(embeddings, np.array([u.label for u in utts]), np.array([u.speaker for u in utts]),
                        n_bootstrap, seed)


def privacy_fold(run: RunConfig, fold: int, project_dir: str, trained: RunFolder, out: RunFolder,
                 device: torch.device, num_classes: int, n_bootstrap: int) -> dict:
    """Both probes on one fold, the linear probe first: the fold's result gets "collapsed" and "linear_probe" with
    the original probe's, so that the fold is finished only with both; returns the fold's fold_k.json content.
    The linear probe needs no dev set and runs whenever the corpus has both genders; the original probe only where
    train, dev and test each hold both ("original_probe_skipped" says why not; its scores are then None). A fold
    without both genders (MELD: no gender labels) gets neither, and the reason, without loading a model."""
    split_file = load_fold(project_dir, run.dataset, fold, run.config)
    labelled = relabel_by_gender([u for s in SPLITS for u in split_file[s]])
    lacking = missing_gender(labelled)
    if lacking:
        reason = f"gender inference needs both genders, and {lacking}"
        probe = {"num_utterances": len(labelled), "num_speakers": len({u.speaker for u in labelled}), "n_splits": 0,
                 "uar": None, "ci95": None, "reason": reason}
        return _without_original_probe(reason, probe)
    backbone, emotion_head = load_trained(run, trained, fold, device, num_classes)
    backbone.set_finetune("frozen")     # the probes read the (fine-tuned) backbone; it is not trained
    source = make_source(run, backbone, device, project_dir, grad_backbone=False)
    data = {split: relabel_by_gender(utts) for split, utts in prepare_splits(source, split_file).items()}
    everything = [u for s in SPLITS for u in data[s]]
    probe = gender_probe(emotion_head, source, everything, run.eval_batch_size, n_bootstrap, seed=fold)
    skipped = one_gender_splits(data)
    if skipped:
        return _without_original_probe(skipped, probe)
    train_fold(run, fold, data, backbone, source, out, device,
               FitSpec(GENDER_CLASSES, PRIVACY_LR, PRIVACY_EPOCHS, class_weighted=False,
                       annotate=lambda test: {"collapsed": collapsed(test), "linear_probe": probe}))
    return read_json(out.fold_json(fold))


def _without_original_probe(why: str, probe: dict) -> dict:
    """A fold's content where the original probe could not run: its scores None, why, and the linear probe."""
    return {"best": {**dict.fromkeys(CLASSIFICATION_KEYS), "collapsed": False, "original_probe_skipped": why,
                     "linear_probe": probe}}
