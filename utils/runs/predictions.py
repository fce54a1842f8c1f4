"""A fold's test predictions CSV (utils.runs.paths.RunFolder.predictions), read back without torch: fairness, privacy,
calibration and the report's confusion matrices read what the finetune stage and predict.py wrote."""
import csv
from pathlib import Path

from utils.core.errors import TrustSerError


def read_predictions(path: Path) -> list[dict]:
    """The rows of a predictions CSV: key, speaker, gender (str); label and prediction as class indices, in the
    order of its prob_<class> columns; probs (floats, in that order). Files of earlier versions hold the indices
    themselves, and are read as well."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    names = [c.removeprefix("prob_") for c in reader.fieldnames or [] if c.startswith("prob_")]
    index = {str(i): i for i in range(len(names))} | {name: i for i, name in enumerate(names)}
    try:
        return [{"key": r["key"], "speaker": r["speaker"], "gender": r["gender"], "label": index[r["label"]],
                 "prediction": index[r["prediction"]], "probs": [float(r[f"prob_{n}"]) for n in names]} for r in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise TrustSerError(f"{path} is not a predictions file of this project ({type(err).__name__}: {err}); its "
                            f"label and prediction columns hold class names of its prob_<class> columns") from None
