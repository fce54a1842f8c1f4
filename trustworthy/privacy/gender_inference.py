"""Privacy: how well speaker gender can be inferred from a trained emotion model.

The original's probe: a 2-class head (the same CNN head) trained on the backbone's hidden states (the fine-tuned
backbone where one was saved) for 10 epochs on fold 1 by default; a fold where it predicted one class for every
test utterance is flagged "collapsed". A linear probe: logistic regression on the emotion model's pooled embedding
with speaker-grouped cross-validation over all utterances of the fold. A higher UAR means more gender leaks.
"""
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from utils.core.flags import at_least  # noqa: E402
from utils.runs.cli import add_run_flag, base_parser  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.runs.stages import PRIVACY_ATTACKS, STAGE, Variant, dig  # noqa: E402
from utils.training.pipeline import resolve_device, run_stage, start_stage, trained_folder  # noqa: E402
from utils.trust.privacy import PROBE_DESCRIPTION, privacy_fold  # noqa: E402

log = logging.getLogger("trust-ser")


def ci_text(ci: list | None) -> str:
    return f", 95% CI {ci[0]:.2f}-{ci[1]:.2f}" if ci else ""


def main(argv: list[str] | None = None) -> None:
    parser = add_run_flag(base_parser(__doc__.splitlines()[0]))
    parser.add_argument("--privacy_attack", default="gender", choices=PRIVACY_ATTACKS)
    parser.add_argument("--bootstrap", default=1000, type=at_least(0),
                        help="speaker resamples for the linear probe's 95%% CI")
    stage = start_stage(parser, default_folds="1", argv=argv)
    args, run, trust = stage.args, stage.run, STAGE["privacy"]
    variant = Variant(privacy_attack=args.privacy_attack)
    out = trust.folder(stage.project_dir, run, variant)
    # a fold without both genders needs no model: its checkpoint is checked where it is loaded
    trained, device = trained_folder(stage, every_fold=False), resolve_device(run.device)

    def evaluate_fold(fold: int) -> dict:
        fold_json = privacy_fold(run, fold, stage.project_dir, trained, out, device, stage.corpus.num_classes,
                                 args.bootstrap)
        measured = measured_text(out.result_of(fold_json))
        if measured:        # what could not be measured, and why, log_summary says
            log.info(f"fold {fold}: {measured}")
        return fold_json

    results = run_stage(stage, trust, evaluate_fold, variant,
                        {"linear_probe": {**PROBE_DESCRIPTION, "bootstrap": args.bootstrap}}, fold_meta=collapsed_meta,
                        settings={"bootstrap": args.bootstrap})
    log_summary(results, results["meta"]["collapsed_folds"], out.results)


def collapsed_meta(per_fold: dict) -> dict:
    """The folds whose original probe predicted one class for every test utterance."""
    folds = [int(f) for f, best in per_fold.items() if best.get("collapsed")]
    return {"collapsed": bool(folds), "collapsed_folds": folds}


def measured_text(best: dict) -> str:
    """The fold's probe scores, those that could be measured."""
    parts = []
    if not best.get("original_probe_skipped"):
        parts.append(f"original probe test UAR {best['uar']:.2f}%" + (" (one class for every test utterance)"
                                                                      if best["collapsed"] else ""))
    probe = best["linear_probe"]
    if probe["uar"] is not None:
        parts.append(f"linear probe UAR {probe['uar']:.2f}%{ci_text(probe['ci95'])} ({probe['n_splits']} "
                     f"speaker-grouped folds over {probe['num_utterances']} utterances)")
    return "; ".join(parts)


def log_summary(results: dict, collapsed: list[int], results_path: Path) -> None:
    """The averages, over how many of the evaluated folds each, and why a probe is missing where it is."""
    done, folds = results["meta"]["folds_done"], results["meta"]["value_folds"]
    parts = []
    for name, keys in (("original probe", ["uar"]), ("linear probe", ["linear_probe", "uar"])):
        value, used = dig(results["average"], keys), dig(folds, keys)
        count = f" ({len(used)} of {len(done)} folds)" if len(used) != len(done) else ""
        parts.append(f"{name} " + (f"{value:.2f}%{count}" if value is not None else "n/a"))
    for fold in done:
        entry = results[str(fold)]
        skipped, unavailable = entry.get("original_probe_skipped"), entry["linear_probe"].get("reason")
        if skipped and skipped == unavailable:
            log.warning(f"fold {fold}: neither probe ran: {skipped}")
            continue
        if skipped:
            log.warning(f"fold {fold}: original probe not run: {skipped}")
        if entry["linear_probe"]["uar"] is None:
            log.warning(f"fold {fold}: linear probe not available: {unavailable}")
    log.info("gender inference test UAR (50% = nothing leaks): " + ", ".join(parts)
             + (f" (original probe collapsed to one class in fold {', '.join(map(str, collapsed))})" if collapsed
                else "") + f"; results: {results_path}")


if __name__ == "__main__":
    run_main(main)
