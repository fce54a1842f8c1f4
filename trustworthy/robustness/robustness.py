"""Robustness: test UAR of each fold's model on clean audio and under everyday perturbations.

Noise, babble, reverberation, telephone band, clipping and a level change (utils/trust/robustness.py defines each),
with the drop from clean and the share of predictions that changed.

The perturbed audio runs through the live backbone (the feature cache holds clean features only), in eval mode, in
length-sorted batches.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.core.errors import run_main  # noqa: E402
from utils.data.audio import TARGET_SR  # noqa: E402
from utils.data.utterances import load_fold  # noqa: E402
from utils.features.source import AudioBank  # noqa: E402
from utils.runs.cli import add_run_flag, base_parser  # noqa: E402
from utils.runs.stages import STAGE  # noqa: E402
from utils.training.pipeline import (evaluation_source, load_trained, resolve_device, run_stage,  # noqa: E402
                                     start_stage, trained_folder)
from utils.training.protocol import crop_seconds, protocol_of  # noqa: E402
from utils.trust.perturbations import DEFAULT_PERTURBATIONS, parse_perturbations, perturbation_keys  # noqa: E402
from utils.trust.robustness import RobustnessSpec, load_noises, score_fold  # noqa: E402

log = logging.getLogger("trust-ser")


def main(argv: list[str] | None = None) -> None:
    parser = add_run_flag(base_parser(__doc__.splitlines()[0]))
    parser.add_argument("--perturbations", default=DEFAULT_PERTURBATIONS,
                        help="comma-separated: white_<dB>db, pink_<dB>db, noise_<dB>db (--noise_dir), babble_<dB>db, "
                             "reverb_<RT60>ms, telephone, clip_<percent of peak>pct, gain_<dB>db "
                             f"(default: {DEFAULT_PERTURBATIONS})")
    parser.add_argument("--noise_dir", default=None,
                        help="folder of real noise recordings (WAV/FLAC): white and pink become this noise")
    stage = start_stage(parser, argv=argv)
    args, run, num_classes = stage.args, stage.run, stage.corpus.num_classes
    spec = RobustnessSpec(parse_perturbations(args.perturbations, args.noise_dir), run.eval_batch_size,
                          protocol_of(run).uar_classes)
    noises = load_noises(args.noise_dir) if args.noise_dir else None
    trust = STAGE["robustness"]
    out = trust.folder(stage.project_dir, run)
    names = [p.name for p in spec.perturbations]
    noise_dir = str(Path(args.noise_dir).resolve()) if args.noise_dir else None
    trained, device = trained_folder(stage), resolve_device(run.device)

    def evaluate_fold(fold: int) -> dict:
        backbone, head = load_trained(run, trained, fold, device, num_classes)
        audio = AudioBank(crop_seconds(run, backbone), run.skip_bad)
        test = [u for u in load_fold(stage.project_dir, run.dataset, fold, run.config)["test"]
                if audio.get(u.path) is not None]
        evaluation = evaluation_source(run, backbone, audio, device)
        result = score_fold(backbone, head, evaluation, test, audio, spec, fold, device, num_classes, noises)
        log.info(f"fold {fold}: clean UAR {result['clean']['uar']:.2f}%, mean drop {result['mean_uar_drop']:.2f} "
                 f"points over {len(names)} perturbations")
        return {**result, "skipped_bad_audio": len(audio.bad)}

    meta = {"robustness": {
        "perturbations": names, "noise_dir": noise_dir,
        "noise_files": len(noises) if noises else 0, "sample_rate": TARGET_SR,
        "seed": "per utterance: sha256 of 'fold/perturbation/key'",
        "definitions": "utils/trust/robustness.py (README: Robustness Evaluation)"}}
    results = run_stage(stage, trust, evaluate_fold, meta=meta, extra_keys=perturbation_keys(spec.perturbations),
                        settings={"perturbations": sorted(names), "noise_dir": noise_dir})
    log.info(f"mean UAR drop {results['average']['mean_uar_drop']:.2f} points (clean UAR "
             f"{results['average']['clean']['uar']:.2f}%); results: {out.results}")


if __name__ == "__main__":
    run_main(main)
