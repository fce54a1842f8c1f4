"""Privacy: how well speaker gender can be inferred from a trained model's backbone embeddings.

A 2-class head (the same CNN head) is trained on the backbone's hidden states (the fine-tuned backbone where
one was saved) for 10 epochs on fold 1 by default; a higher test UAR means more gender leaks.
"""
import dataclasses
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.cli import base_parser  # noqa: E402
from utils.data import Utterance, load_fold  # noqa: E402
from utils.errors import TrustSerError, run_main  # noqa: E402
from utils.finetune import RESULT_KEYS, FitSpec, best_of_fold, folds_to_train, train_fold  # noqa: E402
from utils.paths import finetune_dir, privacy_dir  # noqa: E402
from utils.pipeline import (aggregate, load_trained, make_source, resolve_device, run_flags,  # noqa: E402
                            start_stage)

log = logging.getLogger("trust-ser")
GENDER_CLASSES = ["female", "male"]
PRIVACY_EPOCHS, PRIVACY_LR = 10, 0.0005    # fixed in the original, whatever the finetune flags


def gender_class(gender: str) -> int | None:
    g = gender.strip().lower()
    return 0 if g.startswith("f") else 1 if g.startswith("m") else None


def relabel_by_gender(utts: list[Utterance], where: str) -> list[Utterance]:
    kept = [dataclasses.replace(u, label=gender_class(u.gender)) for u in utts if gender_class(u.gender) is not None]
    if len({u.label for u in kept}) < 2:
        raise TrustSerError(f"{where}: needs utterances of both genders for gender inference (this corpus has no gender labels?)")
    return kept


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--privacy_attack", default="gender", choices=["gender"])
    stage = start_stage(parser, default_folds="1")
    args, run, config, corpus, folds = stage.args, stage.run, stage.config, stage.corpus, stage.folds
    out_dir = privacy_dir(config["project_dir"], run, args.privacy_attack)
    if args.aggregate_only:
        log_results(aggregate(out_dir, corpus.fold_ids(), RESULT_KEYS, run_flags(run), pick=best_of_fold), out_dir)
        return
    device = resolve_device(run.device)
    spec = FitSpec(GENDER_CLASSES, PRIVACY_LR, PRIVACY_EPOCHS, class_weighted=False)
    for fold in folds_to_train(out_dir, folds, run.overwrite):
        backbone, _ = load_trained(run, finetune_dir(config["project_dir"], run), fold, device, corpus.num_classes)
        backbone.set_finetune("frozen")     # the gender head probes the (fine-tuned) backbone; it is not trained
        source = make_source(run, backbone, device, config["project_dir"], grad_backbone=False)
        split_file = f"{run.dataset} fold {fold}"
        data = {s: relabel_by_gender(source.prepare(u), f"{split_file} {s}")
                for s, u in load_fold(config["project_dir"], run.dataset, fold).items()}
        out_dir.mkdir(parents=True, exist_ok=True)
        train_fold(run, fold, data, backbone, source, out_dir, device, spec)
    log_results(aggregate(out_dir, corpus.fold_ids(), RESULT_KEYS, run_flags(run), pick=best_of_fold), out_dir)


def log_results(results: dict, out_dir) -> None:
    log.info(f"gender inference test UAR {results['average']['uar']:.2f}% (50% = nothing leaks); "
             f"results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
