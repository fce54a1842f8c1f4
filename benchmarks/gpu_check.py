"""The project's GPU path against a plainly written ceiling, side by side in one process on the same clips.

    python benchmarks/gpu_check.py --json gpu_check.json            # one H100/H200
    python benchmarks/gpu_check.py --device cpu --tiny              # anywhere: tiny WavLM, seconds

| measurement | the project's path | the ceiling (bf16 weights, fused attention, length-sorted, no caching) |
|---|---|---|
| feature pass | CachedFeatures.prepare, memory only | the backbone over length-sorted padded batches |
| bounded batch | a training batch from stored front ends (memory holds front ends only) | the layers on the batch's padded front ends |
| original batch | --protocol original's training batch (train mode, the padded batch) | a train-mode pass over the padded batch |
| head step | train_epoch on cached features, per batch | one head step on a padded fp16 batch under bf16 autocast |
| evaluation | evaluate() on cached features | the head over padded fp16 batches under bf16 autocast |

Feature pass and evaluation are in ms per second of audio, the rest in ms per batch; each line gives the ratio to
the ceiling and, on CUDA, the target. Nothing is downloaded or read: random-init WavLM base+ (tiny with --tiny),
synthetic clips with IEMOCAP-like durations. Needs torch, transformers and numpy only."""
import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.backbones import build_backbone  # noqa: E402
from model.backbones.wav2vec2 import fused_wavlm_layer  # noqa: E402
from model.heads import CNNSelfAttention  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.core.io import write_json  # noqa: E402
from utils.data.utterances import Utterance, length_sorted_batches, pad_features, pad_waveforms  # noqa: E402
from utils.features.cache import CachedFeatures  # noqa: E402
from utils.features.shards import ENTRY_BYTES  # noqa: E402
from utils.features.source import AudioBank, LiveFeatures, to_device  # noqa: E402
from utils.runs.identity import RunConfig  # noqa: E402
from utils.training.loop import evaluate, set_seed, train_epoch  # noqa: E402
from utils.training.protocol import apply_to_backbone, protocol_source  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_finetune import GAMMA_SHAPE, MIN_SECONDS, NUM_CLASSES, SAMPLE_RATE, synthetic_wave  # noqa: E402

TARGETS = {"feature_pass": 0.10, "bounded_batch": 30.0, "head_step": 1.5}   # on one H100/H200
UNITS = {"feature_pass": "ms/audio-s", "bounded_batch": "ms/batch", "original_batch": "ms/batch",
         "head_step": "ms/batch", "evaluation": "ms/audio-s"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny WavLM, 24 clips, batches of 8 (CPU test)")
    p.add_argument("--clips", type=int, help="clips (default 1024; 24 with --tiny)")
    p.add_argument("--mean_seconds", type=float, default=4.5)
    p.add_argument("--max_seconds", type=float, default=6.0)
    p.add_argument("--batch_size", type=int, help="training batch (default 64; 8 with --tiny)")
    p.add_argument("--eval_batch_size", type=int, default=32)
    p.add_argument("--batches", type=int, default=10, help="training batches timed per measurement")
    p.add_argument("--json", type=Path)
    p.add_argument("--profile", action="store_true",
                   help="after the timings, profile one call of each of ours: its operators with the most self time")
    args = p.parse_args(argv)
    args.clips = args.clips or (24 if args.tiny else 1024)
    args.batch_size = args.batch_size or (8 if args.tiny else 64)
    if args.clips < args.batch_size:
        raise TrustSerError(f"--clips {args.clips}: at least one batch of --batch_size {args.batch_size} needed")
    return args


def make_clips(args, folder: Path) -> tuple[AudioBank, list[Utterance], float]:
    """Synthetic clips (gamma durations, cropped) in an AudioBank under empty placeholder files; total seconds."""
    rng = np.random.default_rng(0)
    seconds = np.clip(rng.gamma(GAMMA_SHAPE, args.mean_seconds / GAMMA_SHAPE, args.clips), MIN_SECONDS,
                      args.max_seconds)
    audio, utts = AudioBank(args.max_seconds, skip_bad=False), []
    for i, s in enumerate(seconds):
        path = folder / f"clip{i:05d}.wav"
        path.touch()
        audio.wavs[str(path)] = synthetic_wave(int(s * SAMPLE_RATE), np.random.default_rng([0, i]))
        utts.append(Utterance(f"clip{i:05d}", "spk", "female", str(path), i % NUM_CLASSES))
    return audio, utts, float(sum(len(w) for w in audio.wavs.values()) / SAMPLE_RATE)


class Clock:
    """Wall milliseconds of a call, the device synchronised before and after."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn, *args, **kwargs) -> float:
        self.sync()
        start = time.perf_counter()
        fn(*args, **kwargs)
        self.sync()
        return 1000 * (time.perf_counter() - start)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Ceiling:
    """The backbone written plainly: a bf16 copy of the Hugging Face model (the 128-tap positional convolution in
    fp32, where cuDNN is fast), WavLM's layers fused (wav2vec 2.0's run Hugging Face's SDPA path)."""

    def __init__(self, backbone, device: torch.device):
        self.model = copy.deepcopy(backbone.model).to(device, torch.bfloat16).eval()
        self.positions = copy.deepcopy(backbone.model.encoder.pos_conv_embed).to(device).eval()
        self.is_wavlm, self.stable = backbone.is_wavlm, backbone.stable_layer_norm
        self.frame_lengths = backbone.frame_lengths

    @torch.no_grad()
    def front(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model.feature_extractor(wav.to(torch.bfloat16)).transpose(1, 2)

    def layers(self, front: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.model.feature_projection(front)
        x = x[0] if isinstance(x, tuple) else x
        x = x + self.positions(x.float()).to(x.dtype)
        encoder = self.model.encoder
        x = x if self.stable else encoder.layer_norm(x)
        bias = encoder.layers[0].attention.compute_bias(x.shape[1], x.shape[1]) if self.is_wavlm else None
        hidden = []
        for layer in encoder.layers:
            x = (fused_wavlm_layer(layer, x, mask, bias, self.stable) if self.is_wavlm
                 else layer(x, attention_mask=mask[:, None, None, :]))
            hidden.append(x)
        return torch.stack(hidden)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        front = self.front(wav)
        frames = self.frame_lengths(lengths).to(wav.device)
        return self.layers(front, torch.arange(front.shape[1], device=wav.device)[None, :] < frames[:, None])


def padded_batches(audio: AudioBank, utts: list[Utterance], batch_size: int, device: torch.device):
    """(padded waveforms on the device, lengths) of length-sorted batches."""
    for idx in length_sorted_batches([len(audio.get(u.path)) for u in utts], batch_size):
        yield audio.device_batch([utts[i] for i in idx], device)


def measure(args, device: torch.device, folder: Path) -> tuple[dict, dict]:
    """(ours, ceiling) per measurement, and one call of ours per measurement (for --profile); placeholder audio files
    under `folder`."""
    set_seed(0)
    clock = Clock(device)
    audio, utts, seconds = make_clips(args, folder)
    backbone = build_backbone("wavlm", random_init=True, tiny=args.tiny).to(device)
    ceiling = Ceiling(backbone, device)
    groups = [utts[i * args.batch_size:(i + 1) * args.batch_size]
              for i in range(min(args.batches, len(utts) // args.batch_size))]
    out, calls = {}, {}     # calls: one call of ours per measurement, for --profile
    (out["feature_pass"], calls["feature_pass"]), cache = feature_pass(args, backbone, ceiling, audio, utts, seconds,
                                                                       clock, device)
    out["bounded_batch"], calls["bounded_batch"] = bounded_batch(args, backbone, ceiling, audio, utts, groups, cache,
                                                                 clock, device)
    out["original_batch"], calls["original_batch"] = original_batch(args, ceiling, audio, groups, clock, device)
    for name, (measured, call) in head_measurements(args, backbone, cache, utts, groups, seconds, clock,
                                                    device).items():
        out[name], calls[name] = measured, call
    return out, calls


def top_ops(call, device: torch.device, n: int = 12) -> list[dict]:
    """The n operators with the most self time in one call (device time on CUDA, CPU time elsewhere), in ms."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    # one profiling cycle: acc_events only quiets torch's warning that events are cleared after each cycle
    with torch.profiler.profile(activities=activities, acc_events=True) as prof:
        call()
        Clock(device).sync()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))[:n]
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key) / 1000} for e in events]


def feature_pass(args, backbone, ceiling: Ceiling, audio, utts, seconds: float, clock: Clock, device: torch.device):
    """((ours, ceiling) in ms per audio-second, one batch of ours), and the filled cache; a warm-up batch first on
    both sides (kernels, cuDNN's autotuner)."""
    CachedFeatures(backbone, audio, device, args.eval_batch_size, None, 1 << 40).prepare(utts[:args.eval_batch_size])
    batches = list(padded_batches(audio, utts, args.eval_batch_size, device))
    with torch.no_grad():
        ceiling.forward(*batches[0])
        ceiling_ms = clock(lambda: [ceiling.forward(wav, lengths) for wav, lengths in batches])
    cache = CachedFeatures(backbone, audio, device, args.eval_batch_size, None, 1 << 40)
    ours_ms = clock(cache.prepare, utts)

    def one_batch():
        fresh = CachedFeatures(backbone, audio, device, args.eval_batch_size, None, 1 << 40)
        fresh.prepare(utts[:args.eval_batch_size])

    return ((ours_ms / seconds, ceiling_ms / seconds), one_batch), cache


def bounded_batch(args, backbone, ceiling: Ceiling, audio, utts, groups, cache: CachedFeatures, clock: Clock,
                  device: torch.device):
    """Memory for the front ends only, so that each training batch runs the layers live from them: (ours, ceiling)
    in ms per batch, and one batch of ours."""
    front_bytes = sum(cache.frames.values()) * backbone.front_end_dim * (2 if device.type == "cuda" else 4)
    bounded = CachedFeatures(backbone, audio, device, args.eval_batch_size, None, front_bytes + len(utts) * ENTRY_BYTES)
    bounded.prepare(utts)
    bounded.batch(groups[0])
    ours = np.mean([clock(bounded.batch, g) for g in groups])
    fronts = bounded.front_ends
    padded = [pad_features([fronts.store.get(fronts.key(u.path)) for u in g]) for g in groups]
    with torch.no_grad():
        ceiling.layers(padded[0][0][0].to(torch.bfloat16), padded[0][1])
        plain = np.mean([clock(ceiling.layers, front[0].to(torch.bfloat16), mask) for front, mask in padded])
    return (ours, plain), lambda: bounded.batch(groups[0])


def original_batch(args, ceiling: Ceiling, audio, groups, clock: Clock, device: torch.device):
    """--protocol original's training batch, the train-mode backbone on the padded batch: (ours, ceiling) in ms per
    batch, and one batch of ours."""
    run = RunConfig(protocol="original", pretrain_model="wavlm", tiny=args.tiny, random_init=True)
    original = apply_to_backbone(run, build_backbone("wavlm", random_init=True, tiny=args.tiny)).to(device)
    source = protocol_source(run, original, LiveFeatures(original, audio, device, round_like_cache=True), device)
    original.train()
    source.batch(groups[0])
    ours = np.mean([clock(source.batch, g) for g in groups])
    train_batches = [pad_waveforms([audio.get(u.path) for u in g]) for g in groups]
    ceiling.model.train()
    with torch.no_grad():
        plain = np.mean([clock(ceiling.forward, to_device(w, device), n) for w, n in train_batches])
    ceiling.model.eval()

    def one_batch():
        original.train()
        source.batch(groups[0])

    return (ours, plain), one_batch


def head_measurements(args, backbone, cache: CachedFeatures, utts, groups, seconds: float, clock: Clock,
                      device: torch.device) -> dict:
    torch.manual_seed(0)
    head = CNNSelfAttention(backbone.hidden_dim, backbone.num_layers, NUM_CLASSES).to(device)
    plain_head = copy.deepcopy(head)
    optimizer, criterion = torch.optim.Adam(head.parameters()), nn.NLLLoss()
    train = [u for g in groups for u in g]

    def epoch():
        train_epoch(head, backbone, cache, train, criterion, optimizer, args.batch_size,
                    torch.Generator().manual_seed(0), NUM_CLASSES)

    epoch()
    ours_step = clock(epoch) / len(groups)
    ours_eval = clock(evaluate, head, backbone, cache, utts, args.eval_batch_size, NUM_CLASSES) / seconds

    plain_optimizer = torch.optim.Adam(plain_head.parameters())
    labels = to_device(torch.tensor([u.label for u in train]), device)
    batches = [pad_features(cache.fetch_stored(g)) for g in groups]

    def plain_epoch():
        for b, (x, mask) in enumerate(batches):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                log_probs = torch.log_softmax(plain_head(x, mask).float(), dim=1)
            loss = criterion(log_probs, labels[b * args.batch_size:(b + 1) * args.batch_size])
            plain_optimizer.zero_grad()
            loss.backward()
            plain_optimizer.step()

    plain_epoch()
    plain_step = clock(plain_epoch) / len(groups)
    eval_batches = [pad_features(cache.fetch_stored([utts[i] for i in idx]))
                    for idx in length_sorted_batches([cache.length(u) for u in utts], args.eval_batch_size)]

    @torch.no_grad()
    def plain_eval():
        for x, mask in eval_batches:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                torch.log_softmax(plain_head(x, mask).float(), dim=1)

    plain_eval()
    return {"head_step": ((ours_step, plain_step), epoch),
            "evaluation": ((ours_eval, clock(plain_eval) / seconds),
                           lambda: evaluate(head, backbone, cache, utts[:4 * args.eval_batch_size],
                                            args.eval_batch_size, NUM_CLASSES))}


def report(args, device: torch.device, measured: dict) -> dict:
    rows = {}
    print(f"\n{'measurement':<16}{'ours':>12}{'ceiling':>12}{'ratio':>8}  unit        target")
    for name, (ours, ceiling) in measured.items():
        target = TARGETS.get(name) if device.type == "cuda" else None
        rows[name] = {"ours": ours, "ceiling": ceiling, "ratio_to_ceiling": ours / ceiling, "unit": UNITS[name],
                      "target": target, "target_met": None if target is None else bool(ours <= target)}
        print(f"{name:<16}{ours:>12.4f}{ceiling:>12.4f}{ours / ceiling:>7.1f}x  {UNITS[name]:<11} "
              f"{'' if target is None else f'<= {target} ' + ('met' if ours <= target else 'MISSED')}")
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "tiny": args.tiny, "clips": args.clips, "batch_size": args.batch_size,
              "eval_batch_size": args.eval_batch_size, "measurements": rows}
    if args.json:
        write_json(args.json, result)
    return result


def add_profiles(args, device: torch.device, result: dict, calls: dict) -> None:
    """--profile: each call's costliest operators, printed and added to the JSON (written again: the timings are
    on disk already, should the profiler fail)."""
    result["profile"] = {name: top_ops(call, device) for name, call in calls.items()}
    unit = "device" if device.type == "cuda" else "CPU"
    for name, ops in result["profile"].items():
        print(f"\n{name}: one call's operators with the most self {unit} time")
        for op in ops[:8]:
            print(f"  {op['self_ms']:>10.3f} ms  {op['calls']:>6}x  {op['op']}")
    if args.json:
        write_json(args.json, result)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrustSerError(f"--device {args.device} requested but CUDA is not available; use --device cpu --tiny")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        measured, calls = measure(args, device, Path(folder))
        result = report(args, device, measured)
        if args.profile:
            add_profiles(args, device, result, calls)
    print(f"total {time.perf_counter() - start:.0f} s")
    return result


if __name__ == "__main__":
    run_main(main)
