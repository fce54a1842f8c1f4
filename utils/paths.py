"""The one place that names folders and files under <project_dir>."""
from argparse import Namespace
from pathlib import Path

from utils.datasets import split_file_name


def split_path(project_dir: str | Path, dataset: str, fold: int) -> Path:
    return Path(project_dir) / "train_split" / split_file_name(dataset, fold)


def audio_dir(project_dir: str | Path, dataset: str) -> Path:
    return Path(project_dir) / "audio" / dataset


def cache_dir(project_dir: str | Path) -> Path:
    return Path(project_dir) / "cache"


def run_name(args: Namespace) -> str:
    """The original's run folder name (its latest scripts end it with the finetune mode), plus suffixes
    for settings it did not have."""
    name = (f"lr{str(args.learning_rate).replace('.', '')}_ep{args.num_epochs}_{args.downstream_model}"
            f"_conv{args.conv_layers}_hid{args.hidden_size}_{args.pooling}_{args.finetune}")
    if args.audio_duration != 6:
        name += f"_ad{args.audio_duration}"
    if args.random_init:
        name += "_randinit"
    return name


def _run_dir(project_dir: str | Path, *parts: str, args: Namespace) -> Path:
    return Path(project_dir).joinpath(*parts, args.dataset, args.pretrain_model, run_name(args))


def finetune_dir(project_dir: str | Path, args: Namespace) -> Path:
    return _run_dir(project_dir, "finetune", args=args)


def fairness_dir(project_dir: str | Path, args: Namespace) -> Path:
    return _run_dir(project_dir, "fairness", args=args)


def attack_dir(project_dir: str | Path, args: Namespace) -> Path:
    return _run_dir(project_dir, "attack", args.attack_method, str(args.snr), args=args)


def privacy_dir(project_dir: str | Path, args: Namespace) -> Path:
    return _run_dir(project_dir, "privacy", args.privacy_attack, args=args)


def flops_dir(project_dir: str | Path, args: Namespace) -> Path:
    return _run_dir(project_dir, "flops", args=args)
