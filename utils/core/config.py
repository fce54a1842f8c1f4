"""config.yml: where the corpora are and where outputs go."""
import shlex
from pathlib import Path

import yaml

from utils.core.errors import TrustSerError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "config" / "config.yml"


def add_config_flag(parser) -> None:
    """--config, as every script takes it."""
    parser.add_argument("--config", default=None, help="config.yml (default: the repo's config/config.yml)")


def load_config(path: str | Path | None = None) -> dict:
    """Read config.yml; relative paths are resolved against the file's folder."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.is_file():
        raise TrustSerError(f"config file {path} not found; pass --config PATH or create it from config/config.yml")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise TrustSerError(f"{_yaml_location(path, err)}: config file is not valid YAML: "
                            f"{getattr(err, 'problem', None) or str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise TrustSerError(f"config file {path} must be a mapping with data_dir and project_dir")
    if not config.get("project_dir"):
        raise TrustSerError(f"config file {path} has no 'project_dir' key")
    config["data_dir"] = config.get("data_dir") or {}  # not needed by manifest corpora, whose paths are in the manifest
    if not isinstance(config["data_dir"], dict):
        raise TrustSerError(f"config file {path}: 'data_dir' must map corpus names to folders")
    base = path.resolve().parent
    config["project_dir"] = str((base / Path(config["project_dir"]).expanduser()))
    config["data_dir"] = {name: str(base / Path(str(p)).expanduser()) for name, p in config["data_dir"].items()}
    config["_path"] = str(path)
    return config


def _yaml_location(path: Path, err: yaml.YAMLError) -> str:
    """file:line:column of the problem (PyYAML counts from 0), or the file alone."""
    mark = getattr(err, "problem_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)


def config_flag(config: str | Path | None) -> str:
    """' --config PATH' for a fix-it command in a hint when the user gave --config (else ''): the command must
    read the same config file as the one that failed."""
    return f" --config {shlex.quote(str(config))}" if config else ""


def corpus_dir(config: dict, dataset: str) -> Path:
    """The folder of one corpus as distributed; a clear error when it is unset or missing."""
    if dataset not in config["data_dir"]:
        raise TrustSerError(f"config file {config['_path']} has no data_dir.{dataset} key")
    folder = Path(config["data_dir"][dataset])
    if not folder.is_dir():
        raise TrustSerError(
            f"corpus folder for {dataset} not found: {folder} (set data_dir.{dataset} in {config['_path']})")
    return folder
