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

from utils.runs.cli import base_parser  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.trust.fairness import METRICS, fairness_report  # noqa: E402
from utils.training.finetune import fold_finished, predictions_path, read_predictions  # noqa: E402
from utils.core.io import read_json  # noqa: E402
from utils.data.manifest import speaker_column  # noqa: E402
from utils.training.metrics import classification_scores  # noqa: E402
from utils.runs.paths import fairness_dir, finetune_dir  # noqa: E402
from utils.training.pipeline import aggregate, evaluate_folds, finetune_command, run_flags, start_stage  # noqa: E402
from utils.runs.identity import RunConfig  # noqa: E402
from utils.training.protocol import protocol_of  # noqa: E402

log = logging.getLogger("trust-ser")
ATTRIBUTES = ("speaker", "gender")
RESERVED = ("uar", "num_test", "skipped_bad_audio")   # other fields of a fold's result


def result_keys(attributes: dict) -> list[str]:
    return [f"{a}.{m}" for a in attributes for m in METRICS] + ["uar"]


def group_columns(group_by: str | None, project_dir: str, dataset: str) -> dict:
    """attribute -> {speaker: group} for the extra column (None for speaker and gender: read from each row)."""
    attributes = dict.fromkeys(ATTRIBUTES)
    column = (group_by or "").strip().lower()
    if column in RESERVED:
        raise TrustSerError(f"--group_by {group_by}: the name of a result field; rename the column in the manifest")
    if column and column not in ATTRIBUTES:
        attributes[column] = speaker_column(project_dir, dataset, column)
    return attributes


def stored_attributes(out_dir: Path, folds: list[int]) -> list[str]:
    """The groups earlier calls evaluated (e.g. a --group_by column), so that results.json keeps averaging them."""
    paths = [out_dir / f"fold_{f}.json" for f in folds]
    return [key for path in paths if path.is_file() for key, value in read_json(path).items()
            if isinstance(value, dict) and "statistical_parity" in value]


def fold_fairness(run: RunConfig, n_bootstrap: int, fold: int, project_dir: str, num_classes: int,
                  attributes: dict) -> dict:
    run_dir = finetune_dir(project_dir, run)
    if not fold_finished(run_dir, fold):
        raise TrustSerError(f"fold {fold} of {run_dir} is not trained (no {predictions_path(run_dir, fold).name}); "
                            f"train it first: {finetune_command(run)} --folds {fold}")
    rows = read_predictions(predictions_path(run_dir, fold))
    labels, predictions = [r["label"] for r in rows], [r["prediction"] for r in rows]
    groups = {attr: [r[attr] if by_speaker is None else by_speaker.get(r["speaker"], "") for r in rows]
              for attr, by_speaker in attributes.items()}
    reports = {attr: fairness_report(labels, predictions, groups[attr], n_bootstrap=n_bootstrap, seed=fold)
               for attr in attributes}
    finetuned = read_json(run_dir / f"fold_{fold}.json")["best"]
    return {**reports, "uar": classification_scores(labels, predictions, num_classes,
                                                       protocol_of(run).uar_classes)["uar"], "num_test": len(rows),
            "skipped_bad_audio": finetuned["skipped_bad_audio"]}


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=1000, type=int, help="bootstrap resamples for the 95%% CIs (0: none)")
    parser.add_argument("--group_by", default=None, metavar="COLUMN",
                        help="also a speaker-level column of the corpus manifest (age group, accent, ...)")
    stage = start_stage(parser, argv=argv)
    args, run, out_dir = stage.args, stage.run, fairness_dir(stage.project_dir, stage.run)
    attributes = group_columns(args.group_by, stage.project_dir, run.dataset)

    def evaluate_fold(fold: int) -> dict:
        result = fold_fairness(run, args.bootstrap, fold, stage.project_dir, stage.corpus.num_classes, attributes)
        for attr in attributes:
            r = result[attr]
            log.info(f"fold {fold} {attr}: " + (f"not available ({r['reason']})" if r["reason"] else
                                                ", ".join(f"{m} {r[m]:.3f}" for m in METRICS)))
        return result

    evaluate_folds(stage, out_dir, evaluate_fold,
                   done=lambda path: path.is_file() and set(attributes) <= set(read_json(path)))
    evaluated = dict.fromkeys([*attributes, *stored_attributes(out_dir, stage.fold_ids)])
    aggregate(out_dir, stage.fold_ids, result_keys(evaluated), {**run_flags(run), "bootstrap": args.bootstrap})
    log.info(f"results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
