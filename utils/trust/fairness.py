"""The fairness stage's part per fold: group parity of the test predictions the finetune stage wrote (no model is
loaded), for speaker, gender and any speaker-level column of a manifest corpus (--group_by)."""
from utils.core.errors import TrustSerError
from utils.data.manifest import speaker_column
from utils.runs.identity import RunConfig
from utils.runs.paths import RunFolder
from utils.runs.predictions import read_predictions
from utils.runs.stages import FAIRNESS_GROUPS, FAIRNESS_METRICS
from utils.training.metrics import classification_scores
from utils.training.pipeline import check_trained
from utils.training.protocol import protocol_of
from utils.trust.parity import fairness_report

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
    """Every group's parity on the fold's test predictions, and the fold's UAR."""
    check_trained(run, trained, [fold])
    finetuned = trained.fold_result(fold)
    rows = read_predictions(trained.predictions(fold))
    labels, predictions = [r["label"] for r in rows], [r["prediction"] for r in rows]
    groups = {attr: [r[attr] if by_speaker is None else by_speaker.get(r["speaker"], "") for r in rows]
              for attr, by_speaker in attributes.items()}
    reports = {attr: fairness_report(labels, predictions, groups[attr], n_bootstrap=n_bootstrap, seed=fold)
               for attr in attributes}
    return {**reports, "uar": classification_scores(labels, predictions, num_classes,
                                                       protocol_of(run).uar_classes)["uar"], "num_test": len(rows),
            "skipped_bad_audio": finetuned["skipped_bad_audio"]}
