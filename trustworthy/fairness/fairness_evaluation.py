"""Fairness: speaker- and gender-wise parity of each fold's test predictions, with bootstrap 95% CIs.

Metrics (max over group pairs; lower is fairer): multi-class statistical parity and equality of opportunity
(holisticai's definitions, as the original used) and the original's demographic parity.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.cli import base_parser  # noqa: E402
from utils.data import load_fold  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.fairness import METRICS, fairness_report  # noqa: E402
from utils.paths import fairness_dir, finetune_dir  # noqa: E402
from utils.pipeline import (aggregate, evaluate_folds, load_trained, make_source, resolve_device,  # noqa: E402
                            run_flags, start_stage)
from utils.run import RunConfig  # noqa: E402
from utils.protocol import protocol_of  # noqa: E402
from utils.training import evaluate  # noqa: E402

log = logging.getLogger("trust-ser")
ATTRIBUTES = ("speaker", "gender")
RESULT_KEYS = [f"{a}.{m}" for a in ATTRIBUTES for m in METRICS] + ["uar"]


def fold_fairness(run: RunConfig, n_bootstrap: int, fold: int, project_dir: str, device, corpus) -> dict:
    backbone, head = load_trained(run, finetune_dir(project_dir, run), fold, device, corpus.num_classes)
    source = make_source(run, backbone, device, project_dir, grad_backbone=False)
    test = source.prepare(load_fold(project_dir, run.dataset, fold)["test"])
    result = evaluate(head, backbone, source, test, run.eval_batch_size, corpus.num_classes,
                      protocol_of(run).uar_classes)
    labels = [u.label for u in test]
    reports = {attr: fairness_report(labels, result.predictions, [getattr(u, attr) for u in test],
                                     n_bootstrap=n_bootstrap, seed=fold)
               for attr in ATTRIBUTES}
    return {**reports, "uar": result.scores["uar"], "num_test": len(test), "skipped_bad_audio": len(source.audio.bad)}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=1000, type=int, help="bootstrap resamples for the 95%% CIs (0: none)")
    stage = start_stage(parser)
    args, run, out_dir = stage.args, stage.run, fairness_dir(stage.project_dir, stage.run)
    device = resolve_device(run.device)

    def evaluate_fold(fold: int) -> dict:
        result = fold_fairness(run, args.bootstrap, fold, stage.project_dir, device, stage.corpus)
        for attr in ATTRIBUTES:
            r = result[attr]
            log.info(f"fold {fold} {attr}: " + (f"not available ({r['reason']})" if r["reason"] else
                                                ", ".join(f"{m} {r[m]:.3f}" for m in METRICS)))
        return result

    evaluate_folds(stage, out_dir, evaluate_fold)
    aggregate(out_dir, stage.corpus.fold_ids(), RESULT_KEYS, {**run_flags(run), "bootstrap": args.bootstrap})
    log.info(f"results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
