"""Fairness: speaker- and gender-wise parity of each fold's test predictions, with bootstrap 95% CIs.

--group_by COLUMN adds the groups of a speaker-level column of a manifest corpus (age group, accent, ...), read
from the corpus description that train_split_gen/manifest.py wrote; its results sit under the column's name.

Metrics (max over group pairs; lower is fairer): multi-class statistical parity and equality of opportunity
(holisticai's definitions, as the original used) and the original's demographic parity. The predictions are those
the finetune stage wrote (fold_k_test_predictions.csv); no model is loaded.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.core.flags import at_least  # noqa: E402
from utils.runs.cli import add_run_flag, base_parser  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.runs.stages import FAIRNESS_METRICS, STAGE  # noqa: E402
from utils.training.pipeline import run_stage, start_stage, trained_folder  # noqa: E402
from utils.trust.fairness import fold_fairness, group_columns, group_keys, stored_attributes  # noqa: E402

log = logging.getLogger("trust-ser")


def main(argv: list[str] | None = None) -> None:
    parser = add_run_flag(base_parser(__doc__.splitlines()[0]))
    parser.add_argument("--bootstrap", default=1000, type=at_least(0),
                        help="bootstrap resamples for the 95%% CIs (0: none)")
    parser.add_argument("--group_by", default=None, metavar="COLUMN",
                        help="also a speaker-level column of the corpus manifest (age group, accent, ...)")
    stage = start_stage(parser, argv=argv)
    args, run, trust = stage.args, stage.run, STAGE["fairness"]
    stored = stored_attributes(trust.folder(stage.project_dir, run), stage.fold_ids)
    attributes = group_columns([args.group_by, *stored], stage.project_dir, run.dataset)
    trained = trained_folder(stage)

    def evaluate_fold(fold: int) -> dict:
        result = fold_fairness(run, args.bootstrap, fold, trained, stage.corpus.num_classes, attributes)
        for attr in attributes:
            r = result[attr]
            log.info(f"fold {fold} {attr}: " + (f"not available ({r['reason']})" if r["reason"] else
                                                ", ".join(f"{m} {r[m]:.3f}" for m in FAIRNESS_METRICS)))
        return result

    run_stage(stage, trust, evaluate_fold, meta={"bootstrap": args.bootstrap}, extra_keys=group_keys(attributes),
              settings={"bootstrap": args.bootstrap})
    log.info(f"results: {trust.result_path(stage.project_dir, run)}")


if __name__ == "__main__":
    run_main(main)
