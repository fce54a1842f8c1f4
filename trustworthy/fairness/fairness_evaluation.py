"""Fairness: speaker- and gender-wise parity of each fold's test predictions, with bootstrap 95% CIs.

Metrics (max over group pairs; lower is fairer): multi-class statistical parity and equality of opportunity
(holisticai's definitions, as the original used) and the original's demographic parity. The predictions are those
the finetune stage wrote (fold_k_test_predictions.csv); no model is loaded.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.runs.cli import base_parser  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.trust.fairness import METRICS, fairness_report  # noqa: E402
from utils.training.finetune import fold_finished, predictions_path, read_predictions  # noqa: E402
from utils.core.io import read_json  # noqa: E402
from utils.training.metrics import classification_scores  # noqa: E402
from utils.runs.paths import fairness_dir, finetune_dir  # noqa: E402
from utils.training.pipeline import aggregate, evaluate_folds, finetune_command, run_flags, start_stage  # noqa: E402
from utils.runs.identity import RunConfig  # noqa: E402
from utils.training.protocol import protocol_of  # noqa: E402

log = logging.getLogger("trust-ser")
ATTRIBUTES = ("speaker", "gender")
RESULT_KEYS = [f"{a}.{m}" for a in ATTRIBUTES for m in METRICS] + ["uar"]


def fold_fairness(run: RunConfig, n_bootstrap: int, fold: int, project_dir: str, num_classes: int) -> dict:
    run_dir = finetune_dir(project_dir, run)
    if not fold_finished(run_dir, fold):
        raise TrustSerError(f"fold {fold} of {run_dir} is not trained (no {predictions_path(run_dir, fold).name}); "
                            f"train it first: {finetune_command(run)} --folds {fold}")
    rows = read_predictions(predictions_path(run_dir, fold))
    labels, predictions = [r["label"] for r in rows], [r["prediction"] for r in rows]
    reports = {attr: fairness_report(labels, predictions, [r[attr] for r in rows], n_bootstrap=n_bootstrap, seed=fold)
               for attr in ATTRIBUTES}
    finetuned = read_json(run_dir / f"fold_{fold}.json")["best"]
    return {**reports, "uar": classification_scores(labels, predictions, num_classes,
                                                       protocol_of(run).uar_classes)["uar"], "num_test": len(rows),
            "skipped_bad_audio": finetuned["skipped_bad_audio"]}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=1000, type=int, help="bootstrap resamples for the 95%% CIs (0: none)")
    stage = start_stage(parser)
    args, run, out_dir = stage.args, stage.run, fairness_dir(stage.project_dir, stage.run)

    def evaluate_fold(fold: int) -> dict:
        result = fold_fairness(run, args.bootstrap, fold, stage.project_dir, stage.corpus.num_classes)
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
