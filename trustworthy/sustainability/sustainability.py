"""Sustainability: FLOPs, parameter counts, inference latency and throughput of a trained model.

FLOPs of backbone + head for one input (torch.utils.flop_counter, exact), parameter counts, and measured inference
latency and throughput on the chosen device. Without a trained checkpoint it
profiles the backbone and an untrained head of the same shape, and says so ("trained_checkpoint": false)."""
import logging
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model.backbones import MIN_SAMPLES, SAMPLE_RATE  # noqa: E402
from utils.core.flags import at_least, number_from  # noqa: E402
from utils.runs.cli import add_run_flag, base_parser  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.data.audio import TARGET_SR  # noqa: E402
from utils.training.pipeline import resolve_device, run_stage, start_stage, trained_folder  # noqa: E402
from utils.training.protocol import protocol_of  # noqa: E402
from utils.runs.stages import STAGE  # noqa: E402
from utils.trust.sustainability import (count_flops, count_parameters, measure_latency, model_to_profile,  # noqa: E402
                                  thop_style_gflops)

log = logging.getLogger("trust-ser")


class Classifier(nn.Module):
    """Waveform -> emotion logits: what is deployed, and what is counted."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden, _, mask = self.backbone(wav, lengths)
        return self.head(hidden, mask)


def profile(model: Classifier, seconds: float, batch: int, repeats: int, device: torch.device) -> dict:
    samples = int(seconds * TARGET_SR)
    one = (torch.randn(1, samples, device=device), torch.tensor([samples], device=device))
    many = (one[0].repeat(batch, 1), one[1].repeat(batch))
    with torch.no_grad():
        flops = count_flops(model, one)
        hidden, _, mask = model.backbone(*one)
        head_flops = count_flops(model.head, (hidden, mask))
        latency = measure_latency(lambda: model(*one), repeats=repeats, device=device, desc="latency, batch 1")
        batched = measure_latency(lambda: model(*many), repeats=repeats, device=device,
                                 desc=f"latency, batch {batch}")
    params = count_parameters(model.backbone, model.head)
    return {"gflops": flops / 1e9, "gmacs": flops / 2e9, "backbone_gflops": (flops - head_flops) / 1e9,
            "head_gflops": head_flops / 1e9, "params_total": params["total"], "params_trainable": params["trainable"],
            "params_backbone": count_parameters(model.backbone)["total"], "params_head": count_parameters(model.head)["total"],
            "latency_ms_median": 1000 * latency["median_s"], "latency_ms_p90": 1000 * latency["p90_s"],
            "throughput_audio_seconds_per_second": batch * seconds / batched["median_s"],
            "throughput_batch": batch, "input_seconds": seconds, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def main(argv: list[str] | None = None) -> None:
    parser = add_run_flag(base_parser(__doc__.splitlines()[0]))
    parser.add_argument("--input_seconds", default=6.0, type=number_from(MIN_SAMPLES / SAMPLE_RATE),
                        help="input length for FLOPs and latency")
    parser.add_argument("--throughput_batch", default=8, type=at_least(1))
    parser.add_argument("--repeats", default=10, type=at_least(1), help="timed repeats (after 3 warm-up runs)")
    stage = start_stage(parser, argv=argv)
    args, run, corpus, trust = stage.args, stage.run, stage.corpus, STAGE["gflops"]

    def evaluate(fold: int) -> dict:
        device = resolve_device(run.device)
        trained_run = trained_folder(stage, every_fold=False)    # no trained fold: an untrained head of its shape
        backbone, head, trained = model_to_profile(run, trained_run, fold, device, corpus.num_classes)
        if args.input_seconds > backbone.max_seconds:
            raise TrustSerError(f"--input_seconds {args.input_seconds:g}: {backbone.name} takes clips of at most "
                                f"{backbone.max_seconds:g} s")
        result = profile(Classifier(backbone, head).eval(), args.input_seconds, args.throughput_batch, args.repeats,
                         device)
        if protocol_of(run).thop_style_gflops:
            result["gflops_original_style"] = thop_style_gflops(backbone, head, device)
        log.info(f"{result['gflops']:.3g} GFLOPs for {args.input_seconds:g} s, {result['params_total'] / 1e6:.3g} M "
                 f"parameters ({result['params_trainable'] / 1e6:.3g} M trainable), latency "
                 f"{result['latency_ms_median']:.1f} ms on {result['device_name']}")
        return {**result, "fold": fold, "weights": backbone.weights_id, "trained_checkpoint": trained}

    run_stage(stage, trust, evaluate, settings={"input_seconds": args.input_seconds,
                                                "throughput_batch": args.throughput_batch, "repeats": args.repeats})
    log.info(f"results: {trust.result_path(stage.project_dir, run)}")


if __name__ == "__main__":
    run_main(main)
