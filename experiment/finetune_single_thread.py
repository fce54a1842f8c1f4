"""Fine-tune a downstream head on a (frozen or partly unfrozen) speech backbone, fold by fold.

cd experiment && python3 finetune_single_thread.py --pretrain_model apc --dataset iemocap \
    --learning_rate 0.0005 --downstream_model cnn --num_epochs 30 --num_layers 3 --conv_layers 2 \
    --pooling mean --hidden_size 128
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.runs.cli import base_parser  # noqa: E402
from utils.data.utterances import load_fold  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.training.finetune import FitSpec, folds_to_train, train_fold  # noqa: E402
from utils.runs.paths import RunFolder, finetune_folder  # noqa: E402
from utils.runs.stages import STAGE  # noqa: E402
from utils.trust.calibration import add_calibration  # noqa: E402
from utils.training.pipeline import (aggregate, make_backbone, make_source, prepare_splits, resolve_device,  # noqa: E402
                                     start_folder, start_stage, take_folder)

log = logging.getLogger("trust-ser")


def main(argv: list[str] | None = None) -> None:
    stage = start_stage(base_parser(__doc__.splitlines()[0]), argv=argv)
    args, run, config, corpus, folds = stage.args, stage.run, stage.config, stage.corpus, stage.folds
    folder = finetune_folder(config["project_dir"], run)
    take_folder(stage, folder)
    todo = [] if args.aggregate_only else folds_to_train(folder, folds, run.overwrite)
    if not todo:    # nothing to train: no backbone to load (no hub access needed)
        _aggregate(stage, folder)
        log.info(f"results: {folder.results}")
        return
    splits = {fold: load_fold(config["project_dir"], run.dataset, fold, run.config) for fold in todo}   # fail fast, before any download
    device = resolve_device(run.device)
    backbone = make_backbone(run, device)
    trains_backbone = backbone.finetune != "frozen"     # --protocol original: not every backbone fine-tunes
    initial = {k: v.clone() for k, v in backbone.state_dict().items()} if trains_backbone else None
    source = make_source(run, backbone, device, config["project_dir"], grad_backbone=trains_backbone)
    start_folder(stage, folder)
    spec = FitSpec(corpus.class_names, run.learning_rate, run.num_epochs, class_weighted=True)
    for fold in todo:
        if initial is not None:
            backbone.load_state_dict(initial)   # every fold starts from the pretrained backbone
        data = prepare_splits(source, splits[fold])
        for split, utts in data.items():
            if not utts:
                raise TrustSerError(f"fold {fold}: every {split} utterance was unreadable and skipped")
        train_fold(run, fold, data, backbone, source, folder, device, spec)
        results = _aggregate(stage, folder)
    if report := source.cache_report():     # sums the sizes of the shard files: once
        log.info(report)
    log.info(f"test UAR {results['average']['uar']:.2f}% ± {results['std']['uar']:.2f} over folds "
             f"{results['meta']['folds_done']}; results: {folder.results}")


def _aggregate(stage, folder: RunFolder) -> dict:
    """results.json: test scores at each fold's best epoch and the calibration of its test probabilities."""
    return aggregate(stage, STAGE["uar"], extra_keys=STAGE["calibration"].result_keys, summary=add_calibration(folder))


if __name__ == "__main__":
    run_main(main)
