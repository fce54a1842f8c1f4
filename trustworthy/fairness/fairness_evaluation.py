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
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.trust.fairness import fairness_report  # noqa: E402
from utils.runs.predictions import read_predictions  # noqa: E402
from utils.data.manifest import speaker_column  # noqa: E402
from utils.training.metrics import classification_scores  # noqa: E402
from utils.runs.paths import RunFolder  # noqa: E402
from utils.runs.stages import FAIRNESS_GROUPS, FAIRNESS_METRICS, STAGE  # noqa: E402
from utils.training.pipeline import finetune_command, run_stage, start_stage, trained_folder  # noqa: E402
from utils.runs.identity import RunConfig  # noqa: E402
from utils.training.protocol import protocol_of  # noqa: E402

log = logging.getLogger("trust-ser")
RESERVED = ("uar", "num_test", "skipped_bad_audio")   # other fields of a fold's result


def group_keys(attributes: dict) -> list[str]:
    """The result keys of the groups beyond the table's (speaker, gender)."""
    return [f"{a}.{m}" for a in attributes if a not in FAIRNESS_GROUPS for m in FAIRNESS_METRICS]


def group_columns(columns: list[str | None], project_dir: str, dataset: str) -> dict:
    """attribute -> {speaker: group} for the extra columns (None for speaker and gender: read from each row)."""
    attributes = dict.fromkeys(FAIRNESS_GROUPS)
    for group_by in columns:
        column = (group_by or "").strip().lower()
        if column in RESERVED:
            raise TrustSerError(f"--group_by {group_by}: the name of a result field; rename the column in the "
                                f"manifest")
        if column and column not in attributes:
            attributes[column] = speaker_column(project_dir, dataset, column)
    return attributes


def stored_attributes(out: RunFolder, folds: list[int]) -> list[str]:
    """The groups earlier calls evaluated (e.g. a --group_by column): the folds evaluated now get them too, so
    that results.json keeps averaging them."""
    results = [result for f in folds if (result := out.fold_result(f)) is not None]
    return [key for result in results for key, value in result.items()
            if isinstance(value, dict) and "statistical_parity" in value]


def fold_fairness(run: RunConfig, n_bootstrap: int, fold: int, trained: RunFolder, num_classes: int,
                  attributes: dict) -> dict:
    finetuned = trained.fold_result(fold)
    if finetuned is None:
        raise TrustSerError(f"fold {fold} of {trained.path} is not trained (no {trained.predictions(fold).name}); "
                            f"train it first: {finetune_command(run)} --folds {fold}")
    rows = read_predictions(trained.predictions(fold))
    labels, predictions = [r["label"] for r in rows], [r["prediction"] for r in rows]
    groups = {attr: [r[attr] if by_speaker is None else by_speaker.get(r["speaker"], "") for r in rows]
              for attr, by_speaker in attributes.items()}
    reports = {attr: fairness_report(labels, predictions, groups[attr], n_bootstrap=n_bootstrap, seed=fold)
               for attr in attributes}
    return {**reports, "uar": classification_scores(labels, predictions, num_classes,
                                                       protocol_of(run).uar_classes)["uar"], "num_test": len(rows),
            "skipped_bad_audio": finetuned["skipped_bad_audio"]}


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
