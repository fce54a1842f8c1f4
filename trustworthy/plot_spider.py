"""Trust profiles: one radar chart per run, an overlay of all runs, and a CSV + Markdown table.

    python3 trustworthy/plot_spider.py --dataset iemocap --output_dir profiles \\
        [--project_dir P | --config config.yml] [--runs MODEL/RUN[=LABEL] ...] \\
        [--attack_method fgsm --snr 45 --privacy_attack gender --privacy_probe original] \\
        [--fairness_group speaker|gender (default: each run's protocol's) --fairness_metric statistical_parity] \\
        [--zoom] [--ranges uar=56:72 fairness=10:30 privacy=88:100 safety=40:100 gflops=0:48]

Runs: every <project_dir>/finetune/<dataset>/<model>/<run>/results.json, or those --runs names. Where each
stage's result lives and which number is read from it is utils/runs/stages.py's table; axes (outward = more
trustworthy on every axis):
  System Performance  emotion UAR (%), higher is better; from chance (100 / classes) to 100
  Fairness            100 x the fairness metric (default: speaker-wise statistical parity), lower is better;
                      from a round value at or above the largest run down to 0
  Privacy             gender-inference UAR (%), lower is better; 100 to 50 (no leak)
  Safety              adversarial attack success rate (%), lower is better; 100 to 0
  Sustainability      GFLOPs of one forward pass, lower is better; from a round value down to 0
--zoom: tight ranges around the runs' values instead (for close runs); --ranges fixes any axis.
A value outside its axis is drawn at the end it passed, hollow, with its true value. A missing result leaves
that axis "n/a" for the run: no point, a note, no crash.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.flags import folder_to_write  # noqa: E402
from utils.reporting.cli import profile_parser, profile_project_dir, profile_variant  # noqa: E402
from utils.data.corpora import get_corpus  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.reporting.profile import STALE_SPLITS, load_profiles  # noqa: E402
from utils.reporting.radar import parse_axes, parse_ranges  # noqa: E402
from utils.reporting.report import AxisChoice, write_trust_profile  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = profile_parser("Draw trust-profile radar charts from finished runs.")
    parser.add_argument("--output_dir", required=True, type=folder_to_write)
    args = parser.parse_args(argv)
    variant, given_ranges = profile_variant(args), parse_ranges(args.ranges)
    project_dir = profile_project_dir(args)
    profiles = load_profiles(project_dir, args.dataset, args.runs, variant)
    choice = AxisChoice(parse_axes(args.axes), given_ranges, get_corpus(args.dataset, project_dir).num_classes,
                        args.zoom)
    for profile in profiles:
        for note in profile.notes(choice.axes):
            print(f"{profile.label}: n/a: {note}", file=sys.stderr)
        if profile.stale_splits:
            print(f"{profile.label}: {STALE_SPLITS} (train_split/ no longer holds its run.json's splits): its numbers "
                  f"do not compare with runs on the present splits", file=sys.stderr)
    write_trust_profile(profiles, choice, variant, args.dataset, args.output_dir)
    print(f"wrote {len(profiles) + 1} charts and trust_profile.csv/.md to {args.output_dir}")


if __name__ == "__main__":
    run_main(main)
