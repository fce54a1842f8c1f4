"""The one place that names run folders under <project_dir> (utils/data/layout.py names the corpus files)."""
from dataclasses import dataclass
from pathlib import Path

from utils.runs.identity import RunConfig


def run_name(run: RunConfig) -> str:
    """The original's run folder name (its latest scripts end it with the finetune mode), plus suffixes
    for settings it did not have."""
    name = (f"lr{str(run.learning_rate).replace('.', '')}_ep{run.num_epochs}_{run.downstream_model}"
            f"_conv{run.conv_layers}_hid{run.hidden_size}_{run.pooling}_{run.finetune}")
    if run.audio_duration != 6:
        name += f"_ad{run.audio_duration}"
    if run.tiny:
        name += "_tiny"
    if run.random_init:
        name += "_randinit"
    if run.protocol != "fixed":
        name += "_origproto"
    return name


def backbone_dir_name(pretrain_model: str) -> str:
    """--pretrain_model as one folder name: built-in names as they are, a hub id owner/name as owner--name
    (Hugging Face's own cache convention), a local model folder by its name."""
    if Path(pretrain_model).is_dir():
        return Path(pretrain_model).resolve().name
    return pretrain_model.replace("/", "--")


@dataclass(frozen=True)
class RunId:
    """A run as its folders know it: what the trust profile and the report find on disk."""
    dataset: str
    pretrain_model: str
    name: str

    @classmethod
    def of(cls, run: "RunConfig | RunId") -> "RunId":
        return run if isinstance(run, RunId) else cls(run.dataset, backbone_dir_name(run.pretrain_model), run_name(run))


def _run_dir(project_dir: str | Path, *parts: str, run: RunConfig | RunId) -> Path:
    rid = RunId.of(run)
    return Path(project_dir).joinpath(*parts, rid.dataset, rid.pretrain_model, rid.name)


def finetune_dir(project_dir: str | Path, run: RunConfig | RunId) -> Path:
    return _run_dir(project_dir, "finetune", run=run)


def fairness_dir(project_dir: str | Path, run: RunConfig | RunId) -> Path:
    return _run_dir(project_dir, "fairness", run=run)


def attack_dir(project_dir: str | Path, run: RunConfig | RunId, method: str, snr: float | str) -> Path:
    """attack/<method>/<snr>/...: 45, 45.0 and "45" all name the folder 45."""
    return _run_dir(project_dir, "attack", method, f"{float(snr):g}", run=run)


def privacy_dir(project_dir: str | Path, run: RunConfig | RunId, attack: str = "gender") -> Path:
    return _run_dir(project_dir, "privacy", attack, run=run)


def flops_dir(project_dir: str | Path, run: RunConfig | RunId) -> Path:
    return _run_dir(project_dir, "flops", run=run)


def robustness_dir(project_dir: str | Path, run: RunConfig | RunId) -> Path:
    return _run_dir(project_dir, "robustness", run=run)
