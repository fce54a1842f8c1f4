"""Report: the trust profile and, per run, training curves, confusion matrix and more, linked from one report.md.

Per run: training curves (per fold, train/dev/test UAR and loss per epoch, best epoch marked), the confusion
matrix summed over folds, the reliability diagram and UAR under perturbation.

    python3 trustworthy/report.py --dataset iemocap [--runs MODEL/RUN[=LABEL] ...] \\
        [--project_dir P | --config config.yml] [--output_dir <project_dir>/report/<dataset>] \\
        [the trust profile's flags: --attack_method, --snr, --privacy_probe, --zoom, --ranges, ...]

Writes <output_dir>/report.md, <output_dir>/trust_profile/ (as plot_spider.py) and, per run,
<output_dir>/<label>/training_curves.png and confusion_matrix.png.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.core.flags import folder_to_write  # noqa: E402
from utils.reporting.cli import profile_parser, profile_project_dir, profile_variant  # noqa: E402
from utils.data.corpora import get_corpus  # noqa: E402
from utils.core.errors import run_main  # noqa: E402
from utils.core.io import write_text  # noqa: E402
from utils.reporting.profile import load_profiles  # noqa: E402
from utils.reporting.radar import parse_axes, parse_ranges  # noqa: E402
from utils.reporting.report import AxisChoice, draw_run, report_markdown, slug, write_trust_profile  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = profile_parser(__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=None, type=folder_to_write,
                        help="default: <project_dir>/report/<dataset>")
    args = parser.parse_args(argv)
    project_dir, variant = profile_project_dir(args), profile_variant(args)
    corpus = get_corpus(args.dataset, project_dir)
    out = args.output_dir or project_dir / "report" / args.dataset
    profiles = load_profiles(project_dir, args.dataset, args.runs, variant)
    choice = AxisChoice(parse_axes(args.axes), parse_ranges(args.ranges), corpus.num_classes, args.zoom)
    charts, ranges = write_trust_profile(profiles, choice, variant, args.dataset, out / "trust_profile")
    runs = [draw_run(project_dir, p, corpus.fold_ids(), corpus.class_names, out / slug(p.label)) for p in profiles]
    write_text(out / "report.md", report_markdown(args.dataset, runs, charts, ranges, variant, out))
    print(out / "report.md")


if __name__ == "__main__":
    run_main(main)
