"""Loading Hugging Face speech encoders: model classes, a model's config.json (folder or hub), from_pretrained with
clear errors."""
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from model.backbones.base import hub_failure, hub_offline
from utils.core.errors import TrustSerError
from utils.core.io import read_json

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def hf_classes(family: str):
    import transformers as t
    return {"wav2vec2": (t.Wav2Vec2Config, t.Wav2Vec2Model), "wavlm": (t.WavLMConfig, t.WavLMModel),
            "hubert": (t.HubertConfig, t.HubertModel),
            "data2vec-audio": (t.Data2VecAudioConfig, t.Data2VecAudioModel),
            "whisper": (t.WhisperConfig, t.WhisperModel)}[family]


def hf_config(source: str) -> dict:
    """config.json of a model folder or of a hub repository (cached copy when the hub is unreachable)."""
    folder = Path(source)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise TrustSerError(f"{folder} is not a Hugging Face model folder (no config.json)")
        return read_json(folder / "config.json")
    if folder.exists():
        raise TrustSerError(f"{folder} is a file; a Hugging Face model is a folder with config.json")
    from huggingface_hub import hf_hub_download
    try:
        return read_json(Path(hf_hub_download(source, "config.json", local_files_only=hub_offline())))
    except Exception as err:  # hub/network errors come in many types
        raise TrustSerError(hub_failure(source, source, err)) from None


def check_hf_folder(path: Path, name: str, family: str) -> None:
    if not (path / "config.json").is_file():
        raise TrustSerError(f"--pretrain_path {path}: {name} needs a Hugging Face model folder (with config.json)")
    model_type = read_json(path / "config.json").get("model_type")
    if model_type is None:
        raise TrustSerError(f"{path / 'config.json'} has no model_type; {name} needs a '{family}' model folder")
    if model_type != family:
        raise TrustSerError(f"--pretrain_path {path} holds a '{model_type}' model; {name} needs a '{family}' one")


def hf_load(name: str, family: str, source: str, local: bool) -> nn.Module:
    """from_pretrained(source), refusing folders whose weights do not cover the encoder."""
    _, model_class = hf_classes(family)
    try:
        with _quiet_transformers():
            model, info = model_class.from_pretrained(source, dtype=torch.float32, output_loading_info=True,
                                                      local_files_only=local or hub_offline())
    except Exception as err:  # hub/network errors and damaged folders come in many types
        if not local:
            raise TrustSerError(hub_failure(name, source, err)) from None
        raise TrustSerError(f"--pretrain_path {source}: cannot load a {family} model "
                            f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})") from None
    needed = "encoder." if family == "whisper" else ""
    missing = [k for k in info["missing_keys"] if k.startswith(needed) and "masked_spec_embed" not in k]
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        example = (missing or [str(m) for m in mismatched])[0]
        raise TrustSerError(f"{source}: {len(missing) + len(mismatched)} {name} weights missing or of the wrong "
                            f"shape (e.g. {example})")
    return model.eval()


@contextmanager
def _quiet_transformers():
    """No "Loading weights" progress bar nor transformers' notes on unused weights (e.g. Whisper's decoder) while
    loading: hf_load reports what matters for the encoder itself, in one line."""
    from transformers.utils import logging as hf_logging
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
