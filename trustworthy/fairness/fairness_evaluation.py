"""Fairness: speaker- and gender-wise parity of each fold's test predictions, with bootstrap 95% CIs.

Metrics (max over group pairs; lower is fairer): multi-class statistical parity and equality of opportunity
(holisticai's definitions, as the original used) and the original's demographic parity.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.cli import base_parser, parse_folds  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.data import load_fold  # noqa: E402
from utils.datasets import get_corpus  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.fairness import METRICS, fairness_report  # noqa: E402
from utils.io import write_json  # noqa: E402
from utils.paths import fairness_dir, finetune_dir  # noqa: E402
from utils.pipeline import aggregate, load_trained, make_source, resolve_device, run_flags, setup_logging  # noqa: E402
from utils.training import evaluate  # noqa: E402

log = logging.getLogger("trust-ser")
ATTRIBUTES = ("speaker", "gender")
RESULT_KEYS = [f"{a}.{m}" for a in ATTRIBUTES for m in METRICS] + ["uar"]


def fold_fairness(args, fold: int, project_dir: str, device, corpus) -> dict:
    backbone, head = load_trained(args, finetune_dir(project_dir, args), fold, device, corpus.num_classes)
    source = make_source(args, backbone, device, project_dir, grad_backbone=False)
    test = source.prepare(load_fold(project_dir, args.dataset, fold)["test"])
    result = evaluate(head, backbone, source, test, args.eval_batch_size, corpus.num_classes)
    labels = [u.label for u in test]
    reports = {attr: fairness_report(labels, result.predictions, [getattr(u, attr) for u in test],
                                     n_bootstrap=args.bootstrap, seed=fold)
               for attr in ATTRIBUTES}
    return {**reports, "uar": result.scores["uar"], "num_test": len(test), "skipped_bad_audio": len(source.audio.bad)}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=1000, type=int, help="bootstrap resamples for the 95%% CIs (0: none)")
    args = parser.parse_args()
    setup_logging()
    config = load_config(args.config)
    corpus = get_corpus(args.dataset)
    folds = parse_folds(args.folds, corpus.fold_ids())
    out_dir = fairness_dir(config["project_dir"], args)
    if not args.aggregate_only:
        device = resolve_device(args.device)
        for fold in folds:
            if (out_dir / f"fold_{fold}.json").is_file() and not args.overwrite:
                log.info(f"fold {fold}: already evaluated in {out_dir}, skipping (--overwrite to redo)")
                continue
            result = fold_fairness(args, fold, config["project_dir"], device, corpus)
            write_json(out_dir / f"fold_{fold}.json", result)
            for attr in ATTRIBUTES:
                r = result[attr]
                if r["reason"]:
                    log.info(f"fold {fold} {attr}: not available ({r['reason']})")
                else:
                    log.info(f"fold {fold} {attr}: " + ", ".join(f"{m} {r[m]:.3f}" for m in METRICS))
    aggregate(out_dir, corpus.fold_ids(), RESULT_KEYS, {**run_flags(args), "bootstrap": args.bootstrap})
    log.info(f"results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
