"""Predict the emotion of new recordings with a trained run: its fold models' probabilities, averaged.

python3 experiment/predict.py <the run's flags, as for finetune_single_thread.py, or --run RUN_FOLDER> \
    --audio FILE_OR_DIR [...] [--output preds.csv] [--folds 1,2]
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.flags import file_to_write  # noqa: E402
from utils.runs.cli import add_run_flag, predict_parser  # noqa: E402
from utils.core.errors import TrustSerError, run_main  # noqa: E402
from utils.training.predict import EmotionRecognizer, find_audio, write_predictions_csv  # noqa: E402
from utils.training.pipeline import start_stage, trained_folder  # noqa: E402

log = logging.getLogger("trust-ser")


def main(argv: list[str] | None = None) -> None:
    parser = add_run_flag(predict_parser(__doc__.splitlines()[0]))
    parser.add_argument("--audio", nargs="+", required=True, help="audio files and/or folders (searched recursively)")
    parser.add_argument("--output", default="predictions.csv", type=file_to_write,
                        help="CSV: path, prediction, prob_<class>")
    stage = start_stage(parser, argv=argv)
    trained_folder(stage, same_splits=False, every_fold=False)     # this run's, wherever its splits are now
    files = find_audio(stage.args.audio)
    recognizer = EmotionRecognizer.from_run(stage.run, stage.project_dir, stage.folds)
    log.info(f"{len(files)} audio files; averaging {len(recognizer.models)} fold model(s) {stage.folds}")
    bad: list[str] = []
    kept, probs = recognizer.classify_files(files, bad)
    if not kept:
        raise TrustSerError(f"none of the {len(files)} audio files is readable (first: {bad[0]})")
    write_predictions_csv(stage.args.output, kept, probs, recognizer.class_names)
    log.info(f"predictions for {len(kept)} files -> {stage.args.output}"
             + (f"; {len(bad)} unusable file(s) skipped (named above)" if bad else ""))


if __name__ == "__main__":
    run_main(main)
