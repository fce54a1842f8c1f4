"""Flags of the scripts that read finished runs (trust profile, report): which runs, which of their results."""
import argparse
from pathlib import Path

from utils.core.config import add_config_flag, load_config
from utils.core.flags import ArgumentParser
from utils.runs.stages import (ATTACK_METHODS, FAIRNESS_GROUPS, FAIRNESS_METRICS, PRIVACY_ATTACKS, PRIVACY_PROBES,
                               STAGE, STAGES, Variant)

_V = Variant()


def profile_parser(description: str) -> argparse.ArgumentParser:
    """Flags choosing finished runs and which of their results to show (trust profile and report)."""
    p = ArgumentParser(description=description)
    p.add_argument("--dataset", required=True)
    p.add_argument("--project_dir", default=None, help="default: project_dir of --config")
    add_config_flag(p)
    p.add_argument("--runs", nargs="+", default=None, metavar="MODEL/RUN[=LABEL]",
                   help="runs to show (default: every run under finetune/<dataset>)")
    p.add_argument("--attack_method", default=_V.attack_method, choices=ATTACK_METHODS,
                   help="the attack results to read (with --snr)")
    p.add_argument("--snr", default=_V.snr, type=float, help="SNR (dB) of the attack results to read")
    p.add_argument("--privacy_attack", default=_V.privacy_attack, choices=PRIVACY_ATTACKS)
    p.add_argument("--privacy_probe", default=_V.privacy_probe, choices=PRIVACY_PROBES,
                   help="the linear probe on the emotion model's embeddings, or the original's gender probe; auto: "
                        "the linear probe for --protocol fixed runs, the original's for --protocol original runs")
    p.add_argument("--fairness_group", default=_V.fairness_group,
                   help=f"{', '.join(FAIRNESS_GROUPS)}, or a column fairness_evaluation.py --group_by evaluated "
                        f"(default: each run's protocol's: speaker; gender under --protocol original, as the original)")
    p.add_argument("--fairness_metric", default=_V.fairness_metric, choices=FAIRNESS_METRICS)
    p.add_argument("--zoom", action="store_true", help="tight automatic ranges around the runs' values (close runs)")
    p.add_argument("--axes", default=None, metavar="AXIS,AXIS,...",
                   help=f"axes to draw, in order, from {', '.join(STAGE)} (default: "
                        f"{','.join(s.key for s in STAGES if s.default_axis)})")
    p.add_argument("--ranges", nargs="+", default=None, metavar="AXIS=LOW:HIGH",
                   help=f"fixed axis ranges in the axis' units; AXIS one of {', '.join(STAGE)}")
    return p


def profile_variant(args: argparse.Namespace) -> Variant:
    return Variant(args.attack_method, args.snr, args.privacy_attack, args.privacy_probe, args.fairness_group,
                   args.fairness_metric)


def profile_project_dir(args: argparse.Namespace) -> Path:
    return Path(args.project_dir) if args.project_dir else Path(load_config(args.config)["project_dir"])
