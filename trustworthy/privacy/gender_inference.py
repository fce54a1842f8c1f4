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

from utils.runs.cli import base_parser  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.training.finetune import RESULT_KEYS, best_of_fold  # noqa: E402
from utils.runs.paths import privacy_dir  # noqa: E402
from utils.training.pipeline import aggregate, resolve_device, run_flags, start_stage  # noqa: E402
from utils.trust.privacy import PROBE_DESCRIPTION, collapsed_folds, privacy_fold, probe_finished  # noqa: E402

log = logging.getLogger("trust-ser")


def ci_text(ci: list | None) -> str:
    return f", 95% CI {ci[0]:.2f}-{ci[1]:.2f}" if ci else ""


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--privacy_attack", default="gender", choices=["gender"])
    parser.add_argument("--bootstrap", default=1000, type=int, help="speaker resamples for the linear probe's 95%% CI")
    stage = start_stage(parser, default_folds="1")
    args, run, corpus = stage.args, stage.run, stage.corpus
    out_dir = privacy_dir(stage.project_dir, run, args.privacy_attack)
    if not args.aggregate_only:
        device = resolve_device(run.device)
        for fold in stage.folds:
            if probe_finished(out_dir, fold) and not run.overwrite:
                log.info(f"fold {fold}: already evaluated in {out_dir}, skipping (--overwrite to redo)")
                continue
            best = privacy_fold(run, fold, stage.project_dir, out_dir, device, corpus.num_classes, args.bootstrap)
            probe = best["linear_probe"]
            log.info(f"fold {fold}: original probe test UAR {best['uar']:.2f}%"
                     + (" (one class for every test utterance)" if best["collapsed"] else "")
                     + (f"; linear probe UAR {probe['uar']:.2f}%{ci_text(probe['ci95'])} ({probe['n_splits']} "
                        f"speaker-grouped folds over {probe['num_utterances']} utterances)"
                        if probe["uar"] is not None else f"; linear probe not available ({probe['reason']})"))
    collapsed = collapsed_folds(out_dir, corpus.fold_ids())
    meta = {**run_flags(run), "collapsed": bool(collapsed), "collapsed_folds": collapsed,
            "linear_probe": {**PROBE_DESCRIPTION, "bootstrap": args.bootstrap}}
    results = aggregate(out_dir, corpus.fold_ids(), RESULT_KEYS + ["linear_probe.uar"], meta, pick=best_of_fold)
    linear = results["average"]["linear_probe"]["uar"]
    log.info(f"gender inference test UAR (50% = nothing leaks): original probe {results['average']['uar']:.2f}%"
             + (f" (collapsed to one class in fold {', '.join(map(str, collapsed))})" if collapsed else "")
             + (f", linear probe {linear:.2f}%" if linear is not None else ", linear probe n/a")
             + f"; results: {out_dir / 'results.json'}")


if __name__ == "__main__":
    run_main(main)
