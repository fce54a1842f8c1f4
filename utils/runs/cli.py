"""Flags shared by every stage script, so the original's command lines work verbatim everywhere."""
import argparse

from model.backbones import BACKBONES
from utils.core.config import add_config_flag
from utils.core.flags import ArgumentParser, at_least, device_name, not_negative, positive
from utils.data.corpora import CORPORA
from utils.runs.identity import ORIGINAL_ONLY, RunConfig

_D = RunConfig()


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags naming a run (dataset, backbone, head, training) and where/how to run it."""
    p = ArgumentParser(description=description)
    _run_flags(p, ORIGINAL_ONLY)
    _training_flags(p)
    return p


def predict_parser(description: str) -> argparse.ArgumentParser:
    """The flags naming a trained run and where to run it, none of training's (cache, overwrite, aggregation); the
    original's unused flags are accepted (a finetune command line pastes as is) but not listed."""
    p = ArgumentParser(description=description)
    _run_flags(p, argparse.SUPPRESS)
    return p


def _run_flags(p: argparse.ArgumentParser, original_only_help: str) -> None:
    add_config_flag(p)
    p.add_argument("--dataset", default=_D.dataset, help=f"one of: {', '.join(CORPORA)}, or a corpus "
                   f"written by train_split_gen/manifest.py")
    p.add_argument("--pretrain_model", default=_D.pretrain_model,
                   help=f"one of: {', '.join(BACKBONES)}; or a Hugging Face hub id / model folder "
                   f"of the wav2vec2, HuBERT, WavLM, data2vec-audio or Whisper families")
    p.add_argument("--pretrain_path", default=None,
                   help="local weights: a Hugging Face model folder, or an s3prl APC/TERA checkpoint file")
    p.add_argument("--random_init", action="store_true",
                   help="true architecture with random weights (offline demo and tests; recorded in results)")
    p.add_argument("--tiny", action="store_true", help="a tiny version of the architecture (tests only)")
    p.add_argument("--finetune", default=_D.finetune, choices=["frozen", "unfrozen_last_layer", "unfrozen"],
                   help="what of the backbone trains with the head: nothing (default), its last layer, or all of it "
                        "(wav2vec2-style CNN encoders stay frozen)")
    p.add_argument("--downstream_model", default=_D.downstream_model, choices=["cnn"])
    p.add_argument("--learning_rate", default=_D.learning_rate, type=positive,
                   help="Adam's learning rate (default: %(default)s)")
    p.add_argument("--num_epochs", default=_D.num_epochs, type=at_least(1),
                   help="epochs per fold; the one with the best dev UAR is kept (default: %(default)s)")
    p.add_argument("--num_layers", default=1, type=int, help=original_only_help)
    p.add_argument("--conv_layers", default=_D.conv_layers, type=at_least(1),
                   help="number of pointwise Conv1d layers in the head (default: %(default)s)")
    p.add_argument("--hidden_size", default=_D.hidden_size, type=at_least(1),
                   help="channels of the head's Conv1d layers (default: %(default)s)")
    p.add_argument("--pooling", default=_D.pooling, choices=["mean", "att"],
                   help="mean, or att (self-attention; the default)")
    p.add_argument("--norm", default="nonorm", help=original_only_help)
    p.add_argument("--optimizer", default="adam", choices=["adam"], help=original_only_help)
    p.add_argument("--audio_duration", default=_D.audio_duration, type=at_least(1),
                   help="seconds each utterance is cropped to (default: %(default)s; Whisper: at most 30)")
    p.add_argument("--batch_size", default=_D.batch_size, type=at_least(1),
                   help="training batch size (default: %(default)s)")
    p.add_argument("--eval_batch_size", default=_D.eval_batch_size, type=at_least(1),
                   help="batch size for evaluation and feature passes (default: %(default)s)")
    p.add_argument("--protocol", default=_D.protocol, choices=["fixed", "original"],
                   help="original: the original's procedure, number for number (README: the two protocols)")
    p.add_argument("--folds", default=None, help="folds to run, e.g. '3' or '1,2' (default: all)")
    p.add_argument("--seeds", default=None, type=at_least(1),
                   help="a corpus with one split (msp-podcast, meld): seeded runs over it, numbered as folds 1..N, "
                        "seed 8 x run (default: 1; 5 under --protocol original, as the original)")
    p.add_argument("--device", default=_D.device, type=device_name, help="cpu, cuda, cuda:1, mps, ... (default: cuda "
                   "where there is one)")


def _training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no_cache", action="store_true",
                   help="recompute the frozen backbone every epoch (no feature cache)")
    p.add_argument("--cache_gb", type=not_negative, default=None,
                   help="disk the feature cache may take, in GiB (default: 80%% of the free space); what does not fit "
                        "is recomputed every epoch")
    p.add_argument("--memory_gb", type=not_negative, default=None,
                   help="GPU (or host) memory holding cached features, in GiB (default: 60%% of free GPU / 30%% of "
                        "available host memory)")
    p.add_argument("--skip_bad", action="store_true",
                   help="skip unreadable audio files and clips under 25 ms (counted in results)")
    p.add_argument("--overwrite", action="store_true", help="redo folds whose outputs already exist")
    p.add_argument("--aggregate_only", action="store_true", help="rebuild results.json from per-fold files")


def add_run_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--run: an evaluation of a finished finetune run names it instead of repeating its flags."""
    parser.add_argument("--run", default=None, metavar="RUN_FOLDER|MODEL/RUN",
                        help="a finetune run folder, or MODEL/RUN under finetune/<--dataset> (as the trust profile "
                             "names runs): the run's flags are read from its run.json")
    return parser


def parse_folds(spec: str | None, all_folds: list[int]) -> list[int]:
    """'--folds 3' or '--folds 2,1,2' -> [3] / [1, 2] (each fold once, in order), checked against the corpus'
    folds."""
    from utils.core.errors import TrustSerError
    if not spec:
        return all_folds
    try:
        folds = [int(x) for x in spec.replace(" ", "").split(",") if x]
    except ValueError:
        raise TrustSerError(f"--folds must be comma-separated integers, got '{spec}'") from None
    if not folds:
        raise TrustSerError(f"--folds '{spec}' names no fold; this corpus has folds {all_folds}")
    bad = [f for f in folds if f not in all_folds]
    if bad:
        raise TrustSerError(f"--folds {spec}: fold(s) {bad} do not exist; this corpus has folds {all_folds}")
    return sorted(set(folds))
