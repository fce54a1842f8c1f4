"""Cost of a model: FLOPs of one forward pass, parameter counts, wall-clock latency.

FLOPs come from torch.utils.flop_counter (matrix products, convolutions, attention; a
multiply-add counts as 2 FLOPs; elementwise ops are not counted). The original used thop,
which reports multiply-accumulates (MACs) of the modules it has rules for (no attention products),
and called them GFLOPs: thop_style_gflops reproduces that number with thop itself.
"""
import logging
import time
from typing import Any, Callable

import numpy as np
import thop
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from utils.core.progress import progress
from utils.data.audio import TARGET_SR
from utils.runs.identity import RunConfig
from utils.training.pipeline import build_head, load_trained, make_backbone
from utils.training.protocol import ORIGINAL_CROP_SECONDS
from utils.runs.paths import RunFolder

log = logging.getLogger("trust-ser")


def model_to_profile(run: RunConfig, trained: RunFolder, fold: int, device: torch.device, num_classes: int
                     ) -> tuple[nn.Module, nn.Module, bool]:
    """(backbone, head, trained): the fold's trained model, or, without it, the backbone and an untrained head of
    the same shape (FLOPs, parameter counts and latency do not depend on trained weights)."""
    if trained.fold_finished(fold):
        return *load_trained(run, trained, fold, device, num_classes), True
    log.info(f"no trained checkpoint of fold {fold} in {trained.path}: profiling the backbone with an untrained head "
             f"of the same shape (FLOPs, parameters and latency do not depend on trained weights)")
    backbone = make_backbone(run, device).eval()
    return backbone, build_head(run, backbone, num_classes).to(device).eval(), False


def count_flops(module: nn.Module, example_inputs: tuple) -> int:
    """Total FLOPs of module(*example_inputs), run once without gradients. Attention runs on its math path, so it
    is counted on every device (flop_counter has formulas for the fused CUDA kernels, none for the CPU's)."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(*example_inputs)
    return int(counter.get_total_flops())


def count_parameters(*modules: nn.Module) -> dict[str, int]:
    """{"total", "trainable"} over the modules together; a parameter shared between them counts once."""
    unique = {id(p): p for m in modules for p in m.parameters()}.values()
    return {"total": sum(p.numel() for p in unique),
            "trainable": sum(p.numel() for p in unique if p.requires_grad)}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10,
                    device: str | torch.device = "cpu", desc: str = "latency") -> dict[str, float]:
    """Seconds per call of fn() after `warmup` untimed calls; waits for the GPU when device is cuda."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in progress(range(repeats), desc=desc):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "p90_s": float(np.percentile(times, 90)),
            "mean_s": float(np.mean(times)), "min_s": min(times), "max_s": max(times), "repeats": repeats}


ORIGINAL_HEAD_FLOPS_FRAMES = 50


def thop_macs(module: nn.Module, inputs: tuple) -> float:
    """thop.profile's count for module(*inputs), the module left as it was (thop keeps its counters on modules it
    has no rule for)."""
    macs, _ = thop.profile(module, inputs=inputs, verbose=False)
    for m in module.modules():
        m._buffers.pop("total_ops", None)
        m._buffers.pop("total_params", None)
    return macs


def thop_style_gflops(backbone, head, device: torch.device) -> float:
    """The original's sustainability number: thop.profile of the backbone on a 6 s waveform plus of the head on 50
    frames of every layer, / 1e9, called GFLOPs (thop's multiply-accumulates). The original profiled Whisper's
    encoder on the log-mel: the log-mel holds no module thop counts, so profiling the backbone on the waveform
    counts the same modules on the same shapes (the Hugging Face encoder itself now refuses clips under 30 s)."""
    samples = ORIGINAL_CROP_SECONDS * TARGET_SR
    wav = (torch.randn(1, samples, device=device), torch.tensor([samples], device=device))
    frames = torch.randn(backbone.num_layers, 1, ORIGINAL_HEAD_FLOPS_FRAMES, backbone.hidden_dim, device=device)
    mask = torch.ones(1, ORIGINAL_HEAD_FLOPS_FRAMES, dtype=torch.bool, device=device)
    return (thop_macs(backbone, wav) + thop_macs(head, (frames, mask))) / 1e9
