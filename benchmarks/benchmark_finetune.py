"""Benchmark a frozen k-fold x E-epoch run, the original's per-epoch loop vs the feature cache; FGSM batched vs 1.

Builds a synthetic corpus in memory (noise + tones, gamma-distributed durations, speakers in sessions of two,
leave-one-session-out folds with the last remaining session as dev, as IEMOCAP), then times in one process:

  per_epoch  the original's loop: the frozen backbone (fp32, no_grad) on every training batch of every epoch, and
             every dev/test utterance evaluated alone through backbone + head after every epoch. Only
             --per_epoch_epochs epochs of fold 1 are run; the totals are extrapolated per training batch and per
             evaluated utterance to all folds x epochs, and the output says so.
  ours       CachedFeatures (one length-sorted feature pass, bf16 autocast on CUDA, kept in memory) and
             utils.training.finetune.train_fold for every fold (batched evaluation, checkpoints and logs included).
  fgsm       the safety stage's attack_fold over fold 1's test set: the original (batch 1, fp32, live clean pass)
             vs batched fp32 (same successes) vs the stage's default (batched, clean predictions from the
             feature cache, bf16 autocast on CUDA).

  --protocol original: both modes train the head on train-mode backbone features (dropout, LayerDrop); ours
             then runs the backbone live on every training batch (utils/training/protocol.py) and keeps only evaluation
             cached. The head keeps the preset's shape; FGSM is timed as under the default protocol.

  python benchmarks/benchmark_finetune.py                         # tiny preset, CPU, well under a minute
  python benchmarks/benchmark_finetune.py --preset iemocap --pretrain_model wavlm --json bench.json   # GPU
  python benchmarks/benchmark_finetune.py --preset podcast_h100 --json podcast_h100.json         # one H100
"""
import argparse
import os
import platform
import resource
import sys
import tempfile
import time
import warnings
from argparse import Namespace
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.backbones import BACKBONES, build_backbone  # noqa: E402
from utils.training import finetune  # noqa: E402
from utils.data.utterances import Utterance, class_weights, pad_waveforms  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.features.cache import CachedFeatures  # noqa: E402
from utils.features.source import AudioBank, LiveFeatures  # noqa: E402
from utils.core.io import write_json  # noqa: E402
from utils.training.pipeline import build_head, load_state  # noqa: E402
from utils.training.protocol import apply_to_backbone, protocol_source  # noqa: E402
from utils.runs.identity import RunConfig  # noqa: E402
from utils.runs.paths import RunFolder  # noqa: E402
from utils.trust.safety import AttackSpec, attack_fold, attack_precision, cached_predictions  # noqa: E402
from utils.training.loop import evaluate, evaluate_heads, make_optimizer, set_seed, train_epoch  # noqa: E402

SAMPLE_RATE = 16000
MIN_SECONDS = 0.5
GAMMA_SHAPE = 2.0       # IEMOCAP's durations: mean about 4.5 s, std about 3.2 s (= mean / sqrt(shape))
# MSP-Podcast's speaking turns are segmented to 2.75-11 s (Lotfian & Busso 2019), mean about 5.6 s with a long
# right tail: 2.75 s plus a gamma tail (shape 2) of mean 2.85 s, cut at 11 s, then cropped like every corpus.
PODCAST_SECONDS = (2.75, 11.0)
BOUNDED_FRACTION = 0.2  # the podcast preset's cache budget, as a fraction of what the full cache takes
PODCAST_UTTERANCES = 150_000   # MSP-Podcast's size: the podcast presets extrapolate to it
PODCAST_EPOCHS = 30
GiB = 2 ** 30
NUM_CLASSES = 4
PER_EPOCH_FOLD = 1      # the fold whose epochs the per_epoch mode times
STAGES = ["feature pass", "head training", "evaluation", "bookkeeping", "total"]

# The tiny backbone is 24x narrower than WavLM base+, so its head is narrowed with it (hidden_size 32): the
# full-size head costs ~1% of the backbone, a 256-channel head on the tiny backbone costs as much as the backbone.
PRESETS = {
    "tiny": dict(num_utterances=400, mean_seconds=1.5, max_seconds=2.0, folds=5, epochs=10, per_epoch_epochs=2,
                 hidden_size=32, tiny=True, threads=1),
    "iemocap": dict(num_utterances=5500, mean_seconds=4.5, max_seconds=6.0, folds=5, epochs=30, per_epoch_epochs=1,
                    hidden_size=256, tiny=False, threads=None),
    # one official split (fold 1 of 5 sessions: 60% train, 20% dev, 20% test); a few epochs: time per epoch counts
    "podcast": dict(num_utterances=3000, mean_seconds=5.6, max_seconds=6.0, folds=5, epochs=3, per_epoch_epochs=1,
                    hidden_size=32, tiny=True, threads=1, run_folds=1, podcast_durations=True,
                    budget_fraction=BOUNDED_FRACTION),
    # the MSP-Podcast target on one H100 at 1/20 scale (150k utterances, 60 GiB of disk, no GPU memory for
    # features) with the full-size WavLM base+: time per epoch is proportional to the audio, so it extrapolates
    # linearly
    "podcast_h100": dict(num_utterances=7500, mean_seconds=5.6, max_seconds=6.0, folds=5, epochs=3,
                         per_epoch_epochs=1, hidden_size=256, tiny=False, threads=None, run_folds=1,
                         podcast_durations=True, cache_gb=3.0, memory_gb=0.0, no_fgsm=True),
}
BUDGET_FLAGS = ("budget_fraction", "cache_gb", "memory_gb")


def parse_args(argv: list[str] | None = None) -> Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=list(PRESETS),
                   help="tiny: tiny random-init backbone, 400 utterances of ~1.3 s (CPU, < 1 min); "
                        "iemocap: full-size random-init backbone, 5.5k utterances of mean 4.5 s cropped at 6 s; "
                        "podcast: MSP-Podcast's durations, one split, and a run with the cache budget at 20%%; "
                        "podcast_h100: the MSP-Podcast target at 1/20 scale with the full-size backbone "
                        "(7500 utterances, 3 GiB of disk, no memory for features; its time: benchmarks/README.md)")
    p.add_argument("--pretrain_model", default="wavlm", choices=list(BACKBONES))
    p.add_argument("--num_utterances", type=int, help="corpus size (preset default)")
    p.add_argument("--mean_seconds", type=float, help="mean utterance duration before cropping (preset default)")
    p.add_argument("--max_seconds", type=float, help="crop length in seconds (preset default)")
    p.add_argument("--folds", type=int, help="sessions of two speakers = leave-one-session-out folds (>= 3)")
    p.add_argument("--run_folds", type=int, help="how many of the folds are run (default: all; podcast: 1)")
    p.add_argument("--budget_fraction", type=float,
                   help="also run with disk and memory budgets at this fraction of the full cache (podcast: 0.2)")
    p.add_argument("--cache_gb", type=float,
                   help="also run with this many GiB of disk for features (podcast_h100: 3); --memory_gb "
                        "defaults to 0 then; not with --budget_fraction")
    p.add_argument("--memory_gb", type=float,
                   help="also run with this many GiB of (device) memory for features (podcast_h100: 0); "
                        "--cache_gb defaults to 0 then; not with --budget_fraction")
    p.add_argument("--epochs", type=int, help="epochs per fold (preset default)")
    p.add_argument("--per_epoch_epochs", type=int,
                   help="epochs of fold 1 the per_epoch mode runs before extrapolating to folds x epochs "
                        "(tiny: 2, iemocap: 1)")
    p.add_argument("--per_epoch_bf16", action="store_true",
                   help="run the per_epoch backbone under bf16 autocast on CUDA (the original ran fp32)")
    p.add_argument("--batch_size", type=int, default=64, help="training batch size")
    p.add_argument("--eval_batch_size", type=int, default=32, help="batch size of the feature pass, evaluation, FGSM")
    p.add_argument("--hidden_size", type=int, help="head channels (preset default)")
    p.add_argument("--protocol", default="fixed", choices=["fixed", "original"],
                   help="original: training features in train mode, live every batch (README: the two protocols)")
    p.add_argument("--snr", type=float, default=45.0, help="FGSM perturbation SNR in dB")
    p.add_argument("--no_fgsm", action="store_true", default=None, help="skip the FGSM timing (podcast_h100: skipped)")
    p.add_argument("--fgsm", dest="no_fgsm", action="store_false", help="time FGSM where the preset skips it")
    p.add_argument("--threads", type=int, help="torch intra-op threads (tiny preset: 1; otherwise torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    given_budgets = [f"--{k}" for k in BUDGET_FLAGS if getattr(args, k) is not None]
    if "--budget_fraction" in given_budgets and len(given_budgets) > 1:
        raise TrustSerError(f"{' and '.join(given_budgets)}: give either --budget_fraction or --cache_gb/--memory_gb")
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key, None) is None and not (key in BUDGET_FLAGS and given_budgets):
            setattr(args, key, value)
    args.run_folds = args.run_folds or args.folds
    args.podcast_durations = bool(getattr(args, "podcast_durations", False))
    args.no_fgsm = bool(args.no_fgsm)
    if args.cache_gb is not None or args.memory_gb is not None:
        args.cache_gb, args.memory_gb = args.cache_gb or 0.0, args.memory_gb or 0.0
    check_args(args)
    return args


def check_args(args: Namespace) -> None:
    positive = ["num_utterances", "mean_seconds", "max_seconds", "epochs", "per_epoch_epochs", "batch_size",
                "eval_batch_size", "hidden_size"]
    bad = [f"--{k} {getattr(args, k)}" for k in positive if getattr(args, k) <= 0]
    if bad:
        raise TrustSerError(f"benchmark flags must be positive: {', '.join(bad)}")
    if args.budget_fraction is not None and not 0 <= args.budget_fraction <= 1:
        raise TrustSerError(f"--budget_fraction {args.budget_fraction}: must be between 0 and 1")
    negative = [f"--{k} {getattr(args, k)}" for k in ("cache_gb", "memory_gb") if (getattr(args, k) or 0) < 0]
    if negative:
        raise TrustSerError(f"benchmark budgets must not be negative: {', '.join(negative)}")
    if not 1 <= args.run_folds <= args.folds:
        raise TrustSerError(f"--run_folds {args.run_folds}: must be between 1 and --folds ({args.folds})")
    if args.folds < 3:
        raise TrustSerError(f"--folds {args.folds}: need at least 3 sessions (train, dev and test)")
    if args.max_seconds < MIN_SECONDS:
        raise TrustSerError(f"--max_seconds {args.max_seconds}: must be at least {MIN_SECONDS} s")
    if args.num_utterances < 4 * args.folds:
        raise TrustSerError(f"--num_utterances {args.num_utterances}: need at least 4 per session of two speakers "
                            f"({4 * args.folds} for --folds {args.folds})")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrustSerError(f"--device {args.device} requested but CUDA is not available; use --device cpu")


# -- synthetic corpus

@dataclass
class SyntheticCorpus:
    """Utterances of 2 * folds speakers (two per session) with random labels; waveforms live in `audio`."""
    audio: AudioBank
    utterances: list[Utterance]
    folds: int
    seconds: np.ndarray        # cropped durations

    def session(self, u: Utterance) -> int:
        return (int(u.speaker[3:]) - 1) // 2 + 1

    def fold(self, k: int) -> dict[str, list[Utterance]]:
        """Fold k tests session k; the last remaining session is dev, the others train (as IEMOCAP's splits)."""
        dev = self.folds if k != self.folds else self.folds - 1
        split = {"train": [], "dev": [], "test": []}
        for u in self.utterances:
            s = self.session(u)
            split["test" if s == k else "dev" if s == dev else "train"].append(u)
        return split


def make_corpus(args: Namespace, folder: Path) -> SyntheticCorpus:
    """Deterministic noise + tone waveforms, kept in an AudioBank under placeholder file names.

    The empty files only give CachedFeatures a path to stat for its cache key; nothing is read from disk.
    """
    rng = np.random.default_rng(args.seed)
    if args.podcast_durations:
        shortest, longest = PODCAST_SECONDS
        tail = rng.gamma(GAMMA_SHAPE, max(args.mean_seconds - shortest, 0.0) / GAMMA_SHAPE, args.num_utterances)
        raw = np.minimum(shortest + tail, longest)
    else:
        raw = rng.gamma(GAMMA_SHAPE, args.mean_seconds / GAMMA_SHAPE, args.num_utterances)
    seconds = np.clip(raw, MIN_SECONDS, args.max_seconds)
    speakers = rng.permutation(np.arange(args.num_utterances) % (2 * args.folds)) + 1   # balanced speakers
    labels = rng.integers(0, NUM_CLASSES, args.num_utterances)
    audio = AudioBank(args.max_seconds, skip_bad=False)
    utterances = []
    for i in range(args.num_utterances):
        path = folder / f"utt{i:05d}.wav"
        path.touch()
        audio.wavs[str(path)] = synthetic_wave(int(seconds[i] * SAMPLE_RATE), np.random.default_rng([args.seed, i]))
        speaker = int(speakers[i])
        utterances.append(Utterance(f"utt{i:05d}", f"spk{speaker:02d}", "female" if speaker % 2 else "male",
                                    str(path), int(labels[i])))
    return SyntheticCorpus(audio, utterances, args.folds, seconds)


def synthetic_wave(num_samples: int, rng: np.random.Generator) -> torch.Tensor:
    t = np.arange(num_samples, dtype=np.float32) / SAMPLE_RATE
    f0 = rng.uniform(90.0, 260.0)
    wave = 0.1 * np.sin(2 * np.pi * f0 * t) + 0.05 * np.sin(2 * np.pi * 2.7 * f0 * t + rng.uniform(0, np.pi))
    wave *= 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2.0, 6.0) * t) ** 2   # syllable-like envelope
    wave += 0.02 * rng.standard_normal(num_samples, dtype=np.float32)
    return torch.from_numpy(wave.astype(np.float32, copy=False))


# -- timing and memory

class StageClock:
    """Wall seconds per stage; on CUDA the device is synchronised at every boundary."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - start

    def timed(self, name: str, fn):
        def wrapper(*a, **kw):
            with self.stage(name):
                return fn(*a, **kw)
        return wrapper


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """Peak GPU memory since the last reset; the process' peak host RSS so far (it never goes down)."""
    peak = {"host_rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return peak


# -- the two modes

class OriginalLoopFeatures(LiveFeatures):
    """The original's input path: the frozen backbone on every batch, fp32 (no autocast, no fp16 rounding)."""

    def __init__(self, backbone, audio: AudioBank, device: torch.device, bf16: bool):
        super().__init__(backbone, audio, device, round_like_cache=False)
        self.bf16 = bf16

    def finish(self, fetched, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bf16:
            return super().finish(fetched, grad)
        with torch.no_grad():
            hidden, _, mask = self.backbone(*fetched)
        return hidden.float(), mask


def head_run(args: Namespace) -> RunConfig:
    """The run train_fold and build_head are given."""
    return RunConfig(hidden_size=args.hidden_size, conv_layers=3, pooling="att", batch_size=args.batch_size,
                     eval_batch_size=args.eval_batch_size)


def protocol_run(args: Namespace) -> RunConfig:
    """The run the feature path follows. The head keeps head_run's shape under --protocol original too: the
    original's 256 channels on the tiny backbone would cost as much as the backbone, on both sides."""
    return head_run(args).but(protocol=args.protocol)


def training_batches(split: dict, batch_size: int) -> int:
    return max(len(split["train"]) // batch_size, 1)   # train_epoch drops the last incomplete batch


def run_per_epoch(args: Namespace, corpus: SyntheticCorpus, backbone, device: torch.device) -> dict:
    """--per_epoch_epochs epochs of fold 1 in the original's loop, extrapolated to folds x epochs."""
    clock = StageClock(device)
    reset_peak_memory(device)
    source = OriginalLoopFeatures(backbone, corpus.audio, device, bf16=args.per_epoch_bf16)
    data = corpus.fold(PER_EPOCH_FOLD)
    set_seed(8 * PER_EPOCH_FOLD)
    head = build_head(head_run(args), backbone, NUM_CLASSES).to(device)
    optimizer, scheduler = make_optimizer(head.parameters(), 2e-4)
    criterion = nn.NLLLoss(class_weights(data["train"], NUM_CLASSES).to(device))
    generator = torch.Generator().manual_seed(8 * PER_EPOCH_FOLD)
    for _ in range(args.per_epoch_epochs):
        with clock.stage("head training"):
            train_epoch(head, backbone, source, data["train"], criterion, optimizer, args.batch_size, generator,
                        NUM_CLASSES)
        with clock.stage("evaluation"):
            dev = evaluate(head, backbone, source, data["dev"], 1, NUM_CLASSES)
            scheduler.step(dev.loss)
            evaluate(head, backbone, source, data["test"], 1, NUM_CLASSES)

    per_batch = clock.seconds["head training"] / (args.per_epoch_epochs * training_batches(data, args.batch_size))
    per_utt = clock.seconds["evaluation"] / (args.per_epoch_epochs * (len(data["dev"]) + len(data["test"])))
    folds = [corpus.fold(k) for k in range(1, args.run_folds + 1)]
    batches = args.epochs * sum(training_batches(f, args.batch_size) for f in folds)
    evaluated = args.epochs * sum(len(f["dev"]) + len(f["test"]) for f in folds)
    stages = {"feature pass": 0.0, "head training": per_batch * batches, "evaluation": per_utt * evaluated,
              "bookkeeping": 0.0}
    stages["total"] = sum(stages.values())
    return {"stages": stages, "measured": dict(clock.seconds), "extrapolated_from_epochs": args.per_epoch_epochs,
            "extrapolated_from_fold": PER_EPOCH_FOLD, "seconds_per_training_batch": per_batch,
            "seconds_per_evaluated_utterance": per_utt, "training_batches": batches, "evaluated_utterances": evaluated,
            "precision": "bf16 autocast" if args.per_epoch_bf16 and device.type == "cuda" else "fp32",
            "memory": peak_memory(device)}


def bounded_budgets(args: Namespace, full_cache_bytes: int) -> tuple[int, int] | None:
    """(memory, disk) bytes of the bounded run: --memory_gb / --cache_gb, or --budget_fraction of the full cache
    each; None: no bounded run."""
    if args.budget_fraction is not None:
        budget = int(args.budget_fraction * full_cache_bytes)
        return budget, budget
    if args.cache_gb is None:
        return None
    return int(args.memory_gb * GiB), int(args.cache_gb * GiB)


def budget_text(fraction: float | None, memory_bytes: int, disk_bytes: int) -> str:
    at = f" (budgets at {fraction:.0%} of the full cache)" if fraction is not None else ""
    return f"{gib(disk_bytes)} disk + {gib(memory_bytes)} memory{at}"


def run_cached(args: Namespace, corpus: SyntheticCorpus, backbone, device: torch.device, run_dir: Path,
               budgets: tuple[int, int] | None = None) -> tuple[dict, CachedFeatures]:
    """Feature pass once, then utils.training.finetune.train_fold for every fold, all epochs; (numbers, the cache).

    Without budgets every feature stays in memory on the device; with (memory, disk) bytes, memory and disk
    shards (under run_dir) hold at most that much each, and the rest is computed live in every epoch."""
    clock = StageClock(device)
    reset_peak_memory(device)
    memory_budget, disk_budget = budgets or (None, None)
    if budgets is None:
        cache = CachedFeatures(backbone, corpus.audio, device, args.eval_batch_size, cache_root=None,
                               memory_budget_bytes=1 << 62)
    else:
        cache = CachedFeatures(backbone, corpus.audio, device, args.eval_batch_size, run_dir / "cache",
                               memory_budget_bytes=memory_budget, disk_budget_bytes=disk_budget)
    source = protocol_source(protocol_run(args), backbone, cache, device)
    with clock.stage("feature pass"):
        first = corpus.fold(1)               # train, dev, test: the finetune script's order (most read first)
        ordered = first["train"] + first["dev"] + first["test"]
        in_fold = set(ordered)
        source.prepare(ordered + [u for u in corpus.utterances if u not in in_fold])
    spec = finetune.FitSpec([f"class{c}" for c in range(NUM_CLASSES)], 2e-4, args.epochs, class_weighted=True)
    batches = evaluated = 0
    with mock.patch.object(finetune, "train_epoch", clock.timed("head training", train_epoch)), \
            mock.patch.object(finetune, "evaluate", clock.timed("evaluation", evaluate)), \
            mock.patch.object(finetune, "evaluate_heads", clock.timed("evaluation", evaluate_heads)):
        for k in range(1, args.run_folds + 1):
            with clock.stage("folds"):
                data = {split: source.prepare(utts) for split, utts in corpus.fold(k).items()}
                finetune.train_fold(head_run(args), k, data, backbone, source, RunFolder(run_dir, trains=True), device,
                                    spec)
            batches += args.epochs * training_batches(data, args.batch_size)
            evaluated += args.epochs * len(data["dev"]) + len(data["test"])   # test: once, by every epoch's head
    seconds = clock.seconds
    stages = {"feature pass": seconds["feature pass"], "head training": seconds["head training"],
              "evaluation": seconds["evaluation"],
              "bookkeeping": seconds["folds"] - seconds["head training"] - seconds["evaluation"]}
    stages["total"] = seconds["feature pass"] + seconds["folds"]
    numbers = {"stages": stages, "seconds_per_training_batch": seconds["head training"] / batches,
            "seconds_per_evaluated_utterance": seconds["evaluation"] / evaluated, "training_batches": batches,
            "evaluated_utterances": evaluated, "precision": cache.precision,
            "cache": {"bytes": cache.store.memory_bytes, "utterances": len(cache.store.memory), "where": str(device),
                      "dtype": "float16", "disk_bytes": cache.disk_bytes(), "memory_budget_bytes": memory_budget,
                      "disk_budget_bytes": disk_budget,
                      "disk_utterances": len(cache.store.disk.entries) if cache.store.disk else 0, **cache.stats,
                      **front_end_numbers(cache)},
            "memory": peak_memory(device)}
    return numbers, cache


def front_end_numbers(cache: CachedFeatures) -> dict:
    """What the front-end tier holds (CNN encoder outputs, fp32 on CPU and bf16 on CUDA, of utterances whose hidden
    states do not fit)."""
    fronts = cache.front_ends
    if fronts is None:
        return {}
    on_disk = set(fronts.store.disk.entries) if fronts.store.disk else set()
    return {"front_end_bytes": fronts.store.memory_bytes, "front_end_utterances": len(fronts.store.memory),
            "front_end_disk_bytes": fronts.disk_bytes(), "front_end_disk_utterances": len(on_disk),
            "front_end_kept_utterances": len(on_disk | set(fronts.store.memory))}   # memory holds copies of disk ones too


def time_fgsm(args: Namespace, corpus: SyntheticCorpus, backbone, device: torch.device, run_dir: Path,
              cache: CachedFeatures) -> dict:
    """attack_fold over fold 1's test set with fold 1's trained head: the original (batch 1, fp32, live clean pass)
    vs batched in fp32 with a live clean pass (same successes expected) vs the safety stage's default (batched,
    clean predictions from the feature cache, bf16 autocast on CUDA), which is what the ratio compares."""
    head = build_head(head_run(args), backbone, NUM_CLASSES).to(device)
    load_state(head, RunFolder(run_dir).head(PER_EPOCH_FOLD))
    head.eval()
    backbone.eval()
    test = corpus.fold(PER_EPOCH_FOLD)["test"]
    out = {"test_utterances": len(test), "snr_db": args.snr}
    for name, batch_size, fp32 in (("batch_1", 1, True), ("batched_fp32", args.eval_batch_size, True),
                                   ("batched", args.eval_batch_size, False)):
        clock = StageClock(device)
        reset_peak_memory(device)
        attack = AttackSpec("fgsm", args.snr, batch_size=batch_size, fp32=fp32)
        with clock.stage("fgsm"):
            clean = None if fp32 else cached_predictions(head, backbone, cache, test, batch_size, NUM_CLASSES)
            result = attack_fold(backbone, head, test, corpus.audio, attack, device, NUM_CLASSES, clean)
        out[name] = {"batch_size": batch_size, "precision": attack_precision(attack, device),
                     "clean_pass": "live" if fp32 else "feature cache", "seconds": clock.seconds["fgsm"],
                     "attacked": result["num_attacked"], "flipped": result["num_flipped"],
                     "success_rate": result["success_rate"], "memory": peak_memory(device)}
    out["ratio"] = out["batch_1"]["seconds"] / out["batched"]["seconds"]
    out["ratio_fp32"] = out["batch_1"]["seconds"] / out["batched_fp32"]["seconds"]
    out["same_successes"] = (out["batch_1"]["flipped"], out["batch_1"]["attacked"]) == \
        (out["batched_fp32"]["flipped"], out["batched_fp32"]["attacked"])
    return out


def warm_up(args: Namespace, corpus: SyntheticCorpus, backbone, device: torch.device) -> None:
    """One backbone pass and one head step outside the clocks (CUDA context, kernels, allocator)."""
    wavs = [corpus.audio.wavs[u.path] for u in corpus.utterances[: min(4, len(corpus.utterances))]]
    wav, lengths = pad_waveforms(wavs)
    with torch.no_grad():
        hidden, _, mask = backbone(wav.to(device), lengths.to(device))
    head = build_head(head_run(args), backbone, NUM_CLASSES).to(device)
    head(hidden, mask).sum().backward()
    StageClock(device).sync()


# -- report

def machine_info(device: torch.device) -> dict:
    info = {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    return info


def gib(n: float) -> str:
    if n == 0:
        return "0 GiB"
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def seconds_text(s: float) -> str:
    return f"{s:.1f} s" if s < 600 else f"{s:.0f} s ({s / 3600:.2f} h)"


def folds_text(cfg: dict) -> str:
    return f"{cfg['folds']} folds" if cfg["run_folds"] == cfg["folds"] else f"{cfg['run_folds']} of {cfg['folds']} folds"


def markdown_report(results: dict) -> str:
    cfg, orig, ours = results["config"], results["per_epoch"], results["ours"]
    machine = results["machine"]
    where = machine.get("gpu", f"CPU, {machine['cpus_usable']} cores, {machine['torch_threads']} torch thread(s)")
    lines = [f"### Frozen {cfg['pretrain_model']} ({'tiny' if cfg['tiny'] else 'full size'}, random init), "
             f"{cfg['num_utterances']} utterances (mean {cfg['mean_seconds_cropped']:.2f} s after cropping at "
             f"{cfg['max_seconds']:g} s), {folds_text(cfg)} x {cfg['epochs']} epochs, "
             f"--protocol {cfg['protocol']}, on {where}",
             "",
             f"per_epoch totals are extrapolated from {orig['extrapolated_from_epochs']} epoch(s) of fold "
             f"{orig['extrapolated_from_fold']} (per training batch and per evaluated utterance).",
             "",
             "| stage | per_epoch (original loop) | ours (feature cache) |",
             "|---|---:|---:|"]
    notes = {"feature pass": "in every batch", "bookkeeping": "not timed"}
    for stage in STAGES:
        left = notes.get(stage) if stage in notes else seconds_text(orig["stages"][stage])
        label = f"**{stage}**" if stage == "total" else stage
        lines.append(f"| {label} | {left} | {seconds_text(ours['stages'][stage])} |")
    lines.append(f"| per training batch of {cfg['batch_size']} | {orig['seconds_per_training_batch'] * 1e3:.1f} ms | "
                 f"{ours['seconds_per_training_batch'] * 1e3:.1f} ms |")
    lines.append(f"| per evaluated utterance | {orig['seconds_per_evaluated_utterance'] * 1e3:.2f} ms | "
                 f"{ours['seconds_per_evaluated_utterance'] * 1e3:.2f} ms |")
    lines.append(f"| backbone precision | {orig['precision']} | {ours['precision']} |")
    if "gpu_peak_bytes" in ours["memory"]:
        lines.append(f"| peak GPU memory | {gib(orig['memory']['gpu_peak_bytes'])} | "
                     f"{gib(ours['memory']['gpu_peak_bytes'])} |")
    lines.append(f"| peak host RSS (process, so far) | {gib(orig['memory']['host_rss_peak_bytes'])} | "
                 f"{gib(ours['memory']['host_rss_peak_bytes'])} |")
    lines.append(f"| feature cache | none | {gib(ours['cache']['bytes'])} fp16 in {ours['cache']['where']} memory, "
                 f"{ours['cache']['utterances']} utterances |")
    lines += ["", "head training includes the backbone in per_epoch; bookkeeping is the rest of train_fold "
                  "(checkpoints, per-epoch JSON, test predictions, per-fold cache look-ups).",
              "", f"**Ratio (per_epoch total / ours total): {results['ratio']:.1f}x**"]
    if results.get("fgsm"):
        lines += ["", *fgsm_report(results["fgsm"])]
    if results.get("bounded"):
        lines += ["", *bounded_report(results)]
    info = ", ".join(f"{k} {v}" for k, v in machine.items())
    lines += ["", f"Machine: {info}. Setup (corpus {results['setup_seconds']['corpus']:.1f} s, backbone "
                  f"{results['setup_seconds']['backbone']:.1f} s) is not in either total."]
    return "\n".join(lines)


def epoch_times(results: dict) -> dict:
    """Seconds per epoch (training, dev and test evaluation, bookkeeping) of each mode, and the ratios."""
    cfg = results["config"]
    epochs = cfg["epochs"] * cfg["run_folds"]
    per = {"per_epoch": results["per_epoch"]["stages"]["total"] / epochs}
    for mode in ("ours", "bounded"):
        stages = results[mode]["stages"]
        per[mode] = (stages["total"] - stages["feature pass"]) / epochs
    return {"seconds_per_epoch": per,
            "ratio_bounded_vs_per_epoch": per["per_epoch"] / per["bounded"],
            "ratio_unbounded_vs_per_epoch": per["per_epoch"] / per["ours"],
            "ratio_bounded_total_vs_per_epoch": results["per_epoch"]["stages"]["total"]
            / results["bounded"]["stages"]["total"]}


def bounded_report(results: dict) -> list[str]:
    cfg, per = results["config"], results["epochs"]["seconds_per_epoch"]
    ours, bounded = results["ours"]["cache"], results["bounded"]["cache"]
    n = cfg["num_utterances"]
    budgets = budget_text(cfg["budget_fraction"], bounded["memory_budget_bytes"], bounded["disk_budget_bytes"])
    lines = [f"| {cfg['run_folds']} fold(s) x {cfg['epochs']} epochs, {n} utterances | original loop | "
             f"unbounded cache | bounded cache: {budgets} |",
             "|---|---:|---:|---:|",
             f"| time per epoch | {seconds_text(per['per_epoch'])} | {seconds_text(per['ours'])} | "
             f"{seconds_text(per['bounded'])} |",
             f"| feature pass (once) | none | {seconds_text(results['ours']['stages']['feature pass'])} | "
             f"{seconds_text(results['bounded']['stages']['feature pass'])} |",
             f"| total | {seconds_text(results['per_epoch']['stages']['total'])} (extrapolated) | "
             f"{seconds_text(results['ours']['stages']['total'])} | {seconds_text(results['bounded']['stages']['total'])} |",
             f"| features on disk | none | none (memory only) | {gib(bounded['disk_bytes'])}: "
             f"{tiers_text(bounded, 'disk_utterances', 'front_end_disk_utterances')} |",
             f"| features in memory | none | {gib(ours['bytes'])}, {ours['utterances']} utterances | "
             f"{gib(bounded['bytes'] + bounded.get('front_end_bytes', 0))}: "
             f"{tiers_text(bounded, 'utterances', 'front_end_utterances')} |",
             f"| computed live every epoch | all | none | {bounded['live']} utterances"
             f"{live_text(bounded)} |",
             f"| peak host RSS (process, so far) | {gib(results['per_epoch']['memory']['host_rss_peak_bytes'])} | "
             f"{gib(results['ours']['memory']['host_rss_peak_bytes'])} | "
             f"{gib(results['bounded']['memory']['host_rss_peak_bytes'])} |",
             "",
             f"**Per epoch: bounded cache {results['epochs']['ratio_bounded_vs_per_epoch']:.1f}x "
             f"the original loop; unbounded cache {results['epochs']['ratio_unbounded_vs_per_epoch']:.1f}x**"]
    if "extrapolated" in results:
        lines += ["", extrapolation_text(results["extrapolated"])]
    return lines


def extrapolate_to_podcast(results: dict) -> dict:
    """The bounded run scaled linearly to MSP-Podcast's size (budgets scaled with it): time per epoch and the
    feature pass are proportional to the audio where the same share of it is stored, which equal scaling keeps."""
    cfg, per = results["config"], results["epochs"]["seconds_per_epoch"]
    scale = PODCAST_UTTERANCES / cfg["num_utterances"]
    cache = results["bounded"]["cache"]
    feature_pass = scale * results["bounded"]["stages"]["feature pass"]
    epoch, original_epoch = scale * per["bounded"], scale * per["per_epoch"]
    return {"utterances": PODCAST_UTTERANCES, "from_utterances": cfg["num_utterances"], "scale": scale,
            "epochs": PODCAST_EPOCHS, "disk_budget_bytes": scale * cache["disk_budget_bytes"],
            "memory_budget_bytes": scale * cache["memory_budget_bytes"], "feature_pass_seconds": feature_pass,
            "seconds_per_epoch": epoch, "hours": (feature_pass + PODCAST_EPOCHS * epoch) / 3600,
            "per_epoch_seconds_per_epoch": original_epoch, "per_epoch_hours": PODCAST_EPOCHS * original_epoch / 3600}


def extrapolation_text(x: dict) -> str:
    return (f"**Linear extrapolation from {x['from_utterances']} to {x['utterances']} utterances (x{x['scale']:g}; "
            f"cache {gib(x['disk_budget_bytes'])} disk + {gib(x['memory_budget_bytes'])} memory at full scale): "
            f"feature pass {seconds_text(x['feature_pass_seconds'])}, {seconds_text(x['seconds_per_epoch'])} per "
            f"epoch, {x['epochs']} epochs {x['hours']:.2f} h; the original loop "
            f"{seconds_text(x['per_epoch_seconds_per_epoch'])} per epoch, {x['per_epoch_hours']:.2f} h.** "
            f"Not measured at full scale.")


def tiers_text(cache: dict, hidden: str, front_end: str) -> str:
    text = f"{cache[hidden]} utterances' hidden states"
    return text + (f", {cache[front_end]} utterances' front ends" if front_end in cache else "")


def live_text(cache: dict) -> str:
    if "live_from_front_end" not in cache:
        return ""
    return (f" ({cache['live_from_front_end']} of them only the layers after the stored front end, "
            f"{cache['live'] - cache['live_from_front_end']} the whole backbone)")


def fgsm_report(f: dict) -> list[str]:
    runs = ("batch_1", "batched_fp32", "batched")
    size = f["batched"]["batch_size"]
    names = {"batch_1": "batch 1, fp32, live clean pass (original)", "batched_fp32": f"batch {size}, fp32, live clean pass",
             "batched": f"batch {size}, {f['batched']['precision']}, clean pass from the cache (default)"}
    lines = [f"| FGSM at {f['snr_db']:g} dB, fold 1's test set ({f['test_utterances']} utterances) | "
             + " | ".join(names[r] for r in runs) + " |",
             "|---|" + "---:|" * len(runs),
             "| wall time | " + " | ".join(seconds_text(f[r]["seconds"]) for r in runs) + " |",
             "| successes (flipped / attacked) | " + " | ".join(f"{f[r]['flipped']} / {f[r]['attacked']}" for r in runs)
             + " |"]
    if "gpu_peak_bytes" in f["batch_1"]["memory"]:
        lines.append("| peak GPU memory | " + " | ".join(gib(f[r]["memory"]["gpu_peak_bytes"]) for r in runs) + " |")
    same = "yes" if f["same_successes"] else "NO"
    lines += ["", f"**FGSM ratio (original / default): {f['ratio']:.1f}x**; fp32 batched: {f['ratio_fp32']:.1f}x, "
                  f"same successes as batch 1: {same}"]
    return lines


def progress(message: str) -> None:
    print(f"[benchmark] {message}", flush=True)


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="trust-ser-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "audio").mkdir()
        (tmp / "run").mkdir()
        start = time.perf_counter()
        corpus = make_corpus(args, tmp / "audio")
        corpus_seconds = time.perf_counter() - start
        progress(f"corpus: {len(corpus.utterances)} utterances, {corpus.seconds.sum() / 3600:.2f} h of audio, mean "
                 f"{corpus.seconds.mean():.2f} s after cropping at {args.max_seconds:g} s ({corpus_seconds:.1f} s)")
        start = time.perf_counter()
        backbone = build_backbone(args.pretrain_model, random_init=True, tiny=args.tiny)
        backbone = apply_to_backbone(protocol_run(args), backbone).to(device)
        backbone_seconds = time.perf_counter() - start
        warm_up(args, corpus, backbone, device)

        progress(f"per_epoch: {args.per_epoch_epochs} epoch(s) of fold {PER_EPOCH_FOLD} (original loop) ...")
        per_epoch = run_per_epoch(args, corpus, backbone, device)
        progress(f"per_epoch: extrapolated total {per_epoch['stages']['total']:.1f} s")
        progress(f"ours: {args.run_folds} fold(s) x {args.epochs} epochs with the feature cache ...")
        ours, cache = run_cached(args, corpus, backbone, device, tmp / "run")
        progress(f"ours: total {ours['stages']['total']:.1f} s")
        bounded = None
        budgets = bounded_budgets(args, ours["cache"]["bytes"])
        if budgets:
            if args.no_fgsm:
                cache = None    # the unbounded cache's device memory is not in the bounded run's peak
            progress(f"bounded: the same with {budget_text(args.budget_fraction, *budgets)} ...")
            (tmp / "bounded").mkdir()
            bounded, _ = run_cached(args, corpus, backbone, device, tmp / "bounded", budgets)
            progress(f"bounded: total {bounded['stages']['total']:.1f} s")
        fgsm = None
        if not args.no_fgsm:
            progress("fgsm: batch 1 vs batched ...")
            fgsm = time_fgsm(args, corpus, backbone, device, tmp / "run", cache)

    results = {"config": {**{k: v for k, v in vars(args).items() if k != "json"},
                          "mean_seconds_cropped": float(corpus.seconds.mean()),
                          "audio_hours": float(corpus.seconds.sum() / 3600)},
               "machine": machine_info(device),
               "setup_seconds": {"corpus": corpus_seconds, "backbone": backbone_seconds},
               "per_epoch": per_epoch, "ours": ours, "ratio": per_epoch["stages"]["total"] / ours["stages"]["total"],
               "fgsm": fgsm, "bounded": bounded}
    if bounded:
        results["epochs"] = epoch_times(results)
        if args.podcast_durations:
            results["extrapolated"] = extrapolate_to_podcast(results)
    print()
    print(markdown_report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, results)


if __name__ == "__main__":
    run_main(main)
