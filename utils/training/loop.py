"""Head training and batched evaluation for one fold."""
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from utils.data.utterances import Utterance, length_sorted_batches
from utils.features.source import prefetched, to_device
from utils.training.metrics import classification_scores

log = logging.getLogger("trust-ser")


@dataclass
class EvalResult:
    loss: float
    scores: dict
    predictions: np.ndarray
    probabilities: np.ndarray
    utterances: list = field(repr=False)

    def summary(self) -> dict:
        return {"loss": self.loss, **self.scores}


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def make_optimizer(params, lr: float) -> tuple[torch.optim.Optimizer, ReduceLROnPlateau]:
    """Adam (wd 1e-4, betas 0.9/0.98) and ReduceLROnPlateau on dev loss (patience 5, x0.5, min 5e-5), as the original."""
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=1e-4, betas=(0.9, 0.98))
    return optimizer, ReduceLROnPlateau(optimizer, mode="min", patience=5, factor=0.5, min_lr=5e-5)


def train_epoch(head: nn.Module, backbone: nn.Module, source, train: list[Utterance], criterion: nn.Module,
                optimizer: torch.optim.Optimizer, batch_size: int, generator: torch.Generator,
                num_classes: int, uar_classes: str = "labels") -> dict:
    """One pass over shuffled training batches (the last incomplete batch dropped, as the original)."""
    head.train()
    backbone.train()          # frozen parts stay in eval mode (Backbone.train), except under --protocol original
    trains_backbone = any(p.requires_grad for p in backbone.parameters())
    order = torch.randperm(len(train), generator=generator).tolist()
    n_batches = max(len(order) // batch_size, 1)
    device = next(head.parameters()).device
    groups = [[train[i] for i in order[b * batch_size:(b + 1) * batch_size]] for b in range(n_batches)]
    labels = to_device(torch.tensor([u.label for utts in groups for u in utts]), device)   # one move per epoch
    losses, predictions = [], []            # on the device: read once, after the epoch
    for b, (utts, (hidden, mask)) in enumerate(prefetched(source, groups, grad=trains_backbone)):
        log_probs = torch.log_softmax(head(hidden, mask), dim=1)
        loss = criterion(log_probs, labels[b * batch_size:b * batch_size + len(utts)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        predictions.append(log_probs.argmax(1))
    y_true, y_pred = labels.tolist(), torch.cat(predictions).tolist()
    return {"loss": float(np.mean(torch.stack(losses).tolist())),
            **classification_scores(y_true, y_pred, num_classes, uar_classes)}


def evaluate(head: nn.Module, backbone: nn.Module, source, utts: list[Utterance], batch_size: int,
             num_classes: int, uar_classes: str = "labels") -> EvalResult:
    """Length-sorted padded batches with masks; the loss is the mean NLL over utterances."""
    return evaluate_heads([head], backbone, source, utts, batch_size, num_classes, uar_classes)[0]


@torch.no_grad()
def evaluate_heads(heads: list[nn.Module], backbone: nn.Module, source, utts: list[Utterance], batch_size: int,
                   num_classes: int, uar_classes: str = "labels") -> list[EvalResult]:
    """evaluate() for several heads on one frozen backbone: each batch's features are made once (the costly
    part when they are computed live) and every head scores them, so each result equals evaluate() alone."""
    for head in heads:
        head.eval()
    backbone.eval()
    device = next(heads[0].parameters()).device
    log_probs = torch.zeros(len(heads), len(utts), num_classes, device=device)    # read once, after the pass
    batches = length_sorted_batches([source.length(u) for u in utts], batch_size)
    for idx, (_, (hidden, mask)) in zip(batches, prefetched(source, [[utts[i] for i in idx] for idx in batches])):
        rows = to_device(torch.tensor(idx), device)
        for h, head in enumerate(heads):
            log_probs[h, rows] = torch.log_softmax(head(hidden, mask), dim=1).float()
    log_probs = log_probs.cpu()
    labels = torch.tensor([u.label for u in utts])
    return [_eval_result(lp, labels, num_classes, uar_classes, utts) for lp in log_probs]


def _eval_result(log_probs: torch.Tensor, labels: torch.Tensor, num_classes: int, uar_classes: str,
                 utts: list[Utterance]) -> EvalResult:
    # The original evaluated one utterance per batch, where the class-weighted NLL reduces to plain NLL.
    loss = nn.functional.nll_loss(log_probs, labels).item()
    preds = log_probs.argmax(1).numpy()
    return EvalResult(loss, classification_scores(labels.numpy(), preds, num_classes, uar_classes), preds,
                      log_probs.exp().numpy(), list(utts))
