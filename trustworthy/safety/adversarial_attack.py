"""Safety: attack success rate of FGSM / PGD / Gaussian noise at a given SNR on each fold's test set.

Only utterances the model classifies correctly are attacked; an attack succeeds when the prediction changes.
The gradient flows from the loss to the waveform through the backbone's own front end.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.core.flags import at_least  # noqa: E402
from utils.runs.cli import add_run_flag, base_parser  # noqa: E402
from utils.data.utterances import load_fold  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.runs.stages import STAGE, Variant  # noqa: E402
from utils.training.loop import set_seed  # noqa: E402
from utils.training.pipeline import load_trained, resolve_device, run_stage, start_stage, trained_folder  # noqa: E402
from utils.runs.stages import ATTACK_METHODS  # noqa: E402
from utils.trust.safety import attack_fold, attack_precision, attack_spec, clean_inputs  # noqa: E402

log = logging.getLogger("trust-ser")


def main(argv: list[str] | None = None) -> None:
    parser = add_run_flag(base_parser(__doc__.splitlines()[0]))
    parser.add_argument("--attack_method", default="fgsm", choices=ATTACK_METHODS)
    parser.add_argument("--snr", "-snr", default=45, type=int, help="SNR (dB) of the perturbation")
    parser.add_argument("--pgd_steps", default=10, type=at_least(1), help="PGD iterations")
    parser.add_argument("--fp32", action="store_true",
                        help="attack in fp32 on CUDA too, clean predictions from a live pass, as the original (no bf16 "
                             "autocast; slower; always so under --protocol original)")
    stage = start_stage(parser, argv=argv)
    args, run, num_classes = stage.args, stage.run, stage.corpus.num_classes
    attack = attack_spec(run, args.attack_method, args.snr, args.pgd_steps, args.fp32)
    variant, trust = Variant(attack_method=attack.method, snr=attack.snr), STAGE["safety"]
    trained, device = trained_folder(stage), resolve_device(run.device)

    def evaluate_fold(fold: int) -> dict:
        set_seed(8 * fold)      # as the original: the train-mode gradient pass draws dropout
        backbone, head = load_trained(run, trained, fold, device, num_classes)
        test = load_fold(stage.project_dir, run.dataset, fold, run.config)["test"]
        test, audio, clean = clean_inputs(run, attack, backbone, head, test, device, stage.project_dir, num_classes)
        result = {**attack_fold(backbone, head, test, audio, attack, device, num_classes, clean),
                  "skipped_bad_audio": len(audio.bad)}
        log.info(f"fold {fold}: {attack.method} at {attack.snr} dB flips {result['num_flipped']} of "
                 f"{result['num_attacked']} correctly classified utterances"
                 + (f" ({result['success_rate']:.2f}%)" if result["success_rate"] is not None else ""))
        return result

    precision = attack_precision(attack, device)
    meta = {"attack": {"method": attack.method, "snr": attack.snr, "pgd_steps": attack.pgd_steps,
                       "precision": precision}}
    settings = {"precision": precision, **({"pgd_steps": attack.pgd_steps} if attack.method == "pgd" else {})}
    results = run_stage(stage, trust, evaluate_fold, variant, meta, settings=settings)
    log.info(f"attack success rate {results['average']['success_rate']:.2f}%; "
             f"results: {trust.result_path(stage.project_dir, run, variant)}")


if __name__ == "__main__":
    run_main(main)
