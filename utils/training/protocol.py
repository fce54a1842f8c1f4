"""`--protocol`: "fixed" (the default, this project's procedure) or "original" (the original code's procedure,
number for number). Every difference `--protocol original` switches back is one named field of `Protocol`;
README "The two protocols" explains each one, and what it cannot reproduce."""
import functools
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from utils.core.errors import TrustSerError
from utils.data.corpora import SINGLE_SPLIT_RUNS, Corpus
from utils.data.utterances import Utterance
from utils.features.cache import StoredFeatures
from utils.features.source import FeatureSource, low_precision
from utils.runs.identity import RunConfig
from utils.runs.stages import PROTOCOL_FAIRNESS_GROUP

log = logging.getLogger("trust-ser")


ORIGINAL_CROP_SECONDS = 6       # the original's dataset and collate_fn both cut at 16000 * 6 samples


@dataclass(frozen=True)
class Protocol:
    name: str
    # frozen parts of the backbone follow train(): dropout and LayerDrop while the head trains, so training
    # features are recomputed live every batch (evaluation stays eval-mode, cached)
    train_mode_features: bool
    # with train_mode_features: each training batch's features are those of the zero-padded batch as the original
    # made them (model/backbones/base.py padded_batch_features), so no stored per-clip front end serves them
    padded_batch_features: bool
    # the head: 3 conv layers only for --conv_layers 3 (else 2), always 256 channels; else both flags honoured
    head_as_original: bool
    # the backbones --finetune reaches (None: all); the others stay frozen whatever --finetune says
    finetunable: frozenset | None
    # FGSM/PGD take the input gradient with head and backbone in train mode
    attack_gradient_in_train_mode: bool
    # UAR averages recall over the classes in the labels, or (sklearn's macro recall) the labels or predictions
    uar_classes: str
    # live trainable backbones are evaluated in fp32 on CUDA (else bf16 autocast, as every other pass)
    fp32_live_evaluation: bool
    # sustainability also records the original's number: thop's MACs of backbone + head on 50 frames, as "GFLOPs"
    thop_style_gflops: bool
    # seeded runs over a corpus with one official split (MSP-Podcast, MELD; --seeds overrides): run k reads the split
    # as fold k, seed 8k. The original looped folds 1-5 over msp-podcast.json in finetune, fairness and safety.
    single_split_runs: int
    # FGSM/PGD in fp32 on CUDA too, the clean predictions from a live pass (else bf16 autocast, the cached predictions)
    attack_fp32_live: bool
    # a fold whose dev UAR never exceeds 0 reports test UAR and ACC 0 (the original's best started at 0 and it saved
    # no checkpoint); else the first epoch is the best until a later one beats it
    best_needs_dev_uar_above_0: bool
    # every utterance cropped to this many seconds, whatever --audio_duration says (None: --audio_duration)
    crop_seconds: int | None
    # the demographic group the trust profile's fairness axis reads (results.json holds both)
    fairness_group: str


PROTOCOLS = {p.name: p for p in [
    Protocol("fixed", train_mode_features=False, padded_batch_features=False, head_as_original=False, finetunable=None,
             attack_gradient_in_train_mode=False, uar_classes="labels", fp32_live_evaluation=False,
             thop_style_gflops=False, single_split_runs=SINGLE_SPLIT_RUNS["fixed"], attack_fp32_live=False,
             best_needs_dev_uar_above_0=False, crop_seconds=None,
             fairness_group=PROTOCOL_FAIRNESS_GROUP["fixed"]),
    Protocol("original", train_mode_features=True, padded_batch_features=True, head_as_original=True,
             finetunable=frozenset({"wavlm", "whisper_tiny"}), attack_gradient_in_train_mode=True,
             uar_classes="labels_or_predictions", fp32_live_evaluation=True, thop_style_gflops=True,
             single_split_runs=SINGLE_SPLIT_RUNS["original"], attack_fp32_live=True, best_needs_dev_uar_above_0=True,
             crop_seconds=ORIGINAL_CROP_SECONDS, fairness_group=PROTOCOL_FAIRNESS_GROUP["original"]),
]}
ORIGINAL_HEAD_CHANNELS = 256


def protocol_of(run: RunConfig) -> Protocol:
    return PROTOCOLS[run.protocol]


def fold_ids(run: RunConfig, corpus: Corpus) -> list[int]:
    """The run's folds: the corpus' folds, or for a corpus with one official split, its seeded runs 1..N."""
    if run.seeds is not None and (run.seeds < 1 or corpus.num_folds):
        raise TrustSerError(f"--seeds {run.seeds}: " + ("must be at least 1" if run.seeds < 1 else
                            f"{corpus.name} has {corpus.num_folds} folds; --seeds is for corpora with one split"))
    return corpus.fold_ids(run.seeds or protocol_of(run).single_split_runs)


def crop_seconds(run: RunConfig, backbone) -> float:
    """Seconds each utterance is cropped to: the run's, or the longest the backbone takes (Whisper: 30 s, its
    positional table)."""
    asked = protocol_of(run).crop_seconds or run.audio_duration
    if asked > backbone.max_seconds:
        _note_shorter_crop(backbone.name, asked, backbone.max_seconds)
    return min(asked, backbone.max_seconds)


@functools.cache
def _note_shorter_crop(name: str, asked: float, longest: float) -> None:
    log.info(f"{name} takes clips of at most {longest:g} s: clips are cropped to {longest:g} s, not "
             f"--audio_duration {asked:g}")


def head_shape(run: RunConfig) -> tuple[int, int]:
    """(conv layers, channels) of the head. The original never passed hidden_dim and built 3 layers only for 3."""
    if protocol_of(run).head_as_original:
        return (3 if run.conv_layers == 3 else 2), ORIGINAL_HEAD_CHANNELS
    return run.conv_layers, run.hidden_size


def backbone_finetune(run: RunConfig) -> str:
    """The finetune mode the backbone is built with: --finetune, unless the protocol's backbone ignores it."""
    reach = protocol_of(run).finetunable
    return run.finetune if reach is None or run.pretrain_model in reach else "frozen"


def apply_to_backbone(run: RunConfig, backbone):
    """Train-mode frozen parts, and the parts the original kept frozen in a mode that trains others."""
    if not protocol_of(run).train_mode_features:
        return backbone
    backbone.frozen_parts_train = True
    for part in _frozen_in_original(backbone):
        part.requires_grad_(False)
    return backbone


def _frozen_in_original(backbone) -> list:
    """WavLM `unfrozen` ran its feature projection under no_grad; Whisper tiny `unfrozen_last_layer` trained
    "layers.3" only, not the encoder's final layer norm."""
    if backbone.name == "wavlm" and backbone.finetune == "unfrozen":
        return [backbone.model.feature_projection]
    if backbone.name == "whisper_tiny" and backbone.finetune == "unfrozen_last_layer":
        return [backbone.encoder.layer_norm]
    return []


def protocol_source(run: RunConfig, backbone, source, device: torch.device):
    """The feature source the protocol trains and evaluates with (`source`: the fixed protocol's)."""
    if not protocol_of(run).train_mode_features:
        return source
    protocol = protocol_of(run)
    return TrainModeFeatures(backbone, source, device, padded_batch=protocol.padded_batch_features)


class TrainModeFeatures(FeatureSource):
    """--protocol original: while the backbone is in train mode (train_epoch), every batch runs it live with
    dropout and LayerDrop, new features every epoch, as the original's loop (no_grad and bf16 autocast on CUDA
    for a frozen backbone), with `padded_batch` on the zero-padded batch as the original formed it (shuffled,
    padded to its longest clip) and made its features; in eval mode, batches come from `eval_source`: the cache
    (the original evaluated in eval mode too, one clip at a time, so those features are the same), or the live
    source (fp32 for a trainable backbone, Protocol.fp32_live_evaluation). Without `padded_batch`, wav2vec2/WavLM
    batches start from the stored per-clip CNN encoder output."""

    def __init__(self, backbone, eval_source: FeatureSource, device: torch.device, padded_batch: bool):
        self.backbone, self.eval_source, self.device = backbone, eval_source, device
        self.padded_batch = padded_batch
        self.audio = eval_source.audio
        # the cache's own front-end tier where it has one; either way within the cache's disk and memory budgets
        self.front_ends = None
        if isinstance(eval_source, StoredFeatures) and not padded_batch:
            self.front_ends = eval_source.front_end_features()

    def prepare(self, utts: list[Utterance]) -> list[Utterance]:
        kept = self.eval_source.prepare(utts)
        return self.front_ends.prepare(kept) if self.front_ends else kept

    def length(self, u: Utterance) -> int:
        return self.eval_source.length(u)

    def cache_report(self) -> str | None:
        return self.eval_source.cache_report()

    def fetch(self, utts: list[Utterance]):
        """What can be read ahead of the batch (utils.features.source.prefetched): the eval source's part, or the
        stored front ends / waveforms that the live train-mode pass starts from."""
        if not self.backbone.training:
            return self.eval_source.fetch(utts)
        if self.front_ends:
            return self.front_ends.fetch(utts)
        return self.audio.device_batch(utts, self.device)

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's hidden states; the live pass runs here, in the caller's thread, so dropout draws in order."""
        if not self.backbone.training:
            return self.eval_source.finish(fetched, grad)
        with torch.set_grad_enabled(grad), (nullcontext() if grad else low_precision(self.backbone, self.device)):
            if self.front_ends:
                front, mask = fetched
                hidden, _, mask = self.backbone.forward_from_front_end(front[0].float(), mask.sum(1))
            else:
                with self.backbone.padded_batch_features() if self.padded_batch else nullcontext():
                    hidden, _, mask = self.backbone(*fetched)
        return hidden.float(), mask


@contextmanager
def train_mode(*modules):
    """The modules in train mode inside, eval mode after (the original's attack: model.train(); backbone_model.train()
    for the gradient pass, eval for the predictions)."""
    for m in modules:
        m.train()
    try:
        yield
    finally:
        for m in modules:
            m.eval()
