"""The one place that names run folders under <project_dir> and the files in them (utils/data/layout.py names the
corpus files): no other module spells a per-fold file name."""
import glob
from dataclasses import dataclass
from pathlib import Path

from utils.core.errors import TrustSerError
from utils.core.io import read_json
from utils.runs.identity import RunConfig, folder_suffixes


def run_name(run: RunConfig) -> str:
    """The original's run folder name (its latest scripts end it with the finetune mode), plus a suffix for each
    identity flag not at its default that the name does not show (utils/runs/identity.py IDENTITY)."""
    return (f"lr{str(run.learning_rate).replace('.', '')}_ep{run.num_epochs}_{run.downstream_model}"
            f"_conv{run.conv_layers}_hid{run.hidden_size}_{run.pooling}_{run.finetune}{folder_suffixes(run)}")


def backbone_dir_name(pretrain_model: str) -> str:
    """--pretrain_model as one folder name: built-in names as they are, a hub id owner/name as owner--name
    (Hugging Face's own cache convention), a local model folder by its name."""
    if Path(pretrain_model).is_dir():
        return Path(pretrain_model).resolve().name
    return pretrain_model.replace("/", "--")


def model_and_run(spec: str) -> tuple[str, str] | None:
    """MODEL/RUN, as the trust profile names a run (MODEL: a built-in name, a hub id owner/name or its folder name
    owner--name) -> (the model's folder name, the run's); None where spec is not of that form."""
    model, _, name = spec.strip("/").rpartition("/")
    if not model or not name or model.count("/") > 1:
        return None
    return backbone_dir_name(model), name


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


def attacks_run(project_dir: str | Path, run: RunConfig | RunId) -> list[tuple[str, float]]:
    """The (method, SNR) of every attack with a results.json for the run, sorted."""
    rid = RunId.of(run)
    run_path = glob.escape(f"{rid.dataset}/{rid.pretrain_model}/{rid.name}")
    found = Path(project_dir).glob(f"attack/*/*/{run_path}/results.json")
    return sorted((path.parents[4].name, float(path.parents[3].name)) for path in found
                  if _is_number(path.parents[3].name))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def privacy_dir(project_dir: str | Path, run: RunConfig | RunId, attack: str = "gender") -> Path:
    return _run_dir(project_dir, "privacy", attack, run=run)


def flops_dir(project_dir: str | Path, run: RunConfig | RunId) -> Path:
    return _run_dir(project_dir, "flops", run=run)


def robustness_dir(project_dir: str | Path, run: RunConfig | RunId) -> Path:
    return _run_dir(project_dir, "robustness", run=run)


@dataclass(frozen=True)
class RunFolder:
    """One run folder (a finetune run, or one evaluation's outputs for it): every file name in it, and whether a
    fold is finished.

    A fold's fold_k.json is its result; where the folder trains heads (finetune, the privacy probe) it holds the
    per-epoch history and, written last, the result under "best" (with the best epoch, after the fold's head
    checkpoint and test predictions)."""
    path: Path
    trains: bool = False

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def record(self) -> Path:
        """run.json: what the run is (utils/runs/identity.py run_record)."""
        return self.path / "run.json"

    @property
    def lock(self) -> Path:
        return self.path / ".results.lock"

    def fold_json(self, fold: int) -> Path:
        return self.path / f"fold_{fold}.json"

    def head(self, fold: int) -> Path:
        """The best epoch's head."""
        return self.path / f"fold_{fold}.pt"

    def backbone(self, fold: int) -> Path:
        """The best epoch's trained backbone weights (a backbone that is not frozen)."""
        return self.path / f"fold_{fold}_backbone.pt"

    def last(self, fold: int) -> Path:
        """Everything to resume after the last finished epoch."""
        return self.path / f"fold_{fold}_last.pt"

    def epoch_head(self, fold: int, epoch: int) -> Path:
        """An epoch's head, kept until the test split is scored after training."""
        return self.path / f"fold_{fold}_epoch_{epoch}_head.pt"

    def epoch_heads(self, fold: int) -> list[Path]:
        return sorted(self.path.glob(f"fold_{fold}_epoch_*_head.pt"))

    def partial_writes(self, fold: int | str) -> list[Path]:
        """Temporary files a process killed mid-write left (utils/core/io.py names them .<name>.<random>.tmp)."""
        return sorted(self.path.glob(f".fold_{fold}[._]*.tmp"))

    def predictions(self, fold: int) -> Path:
        """The test predictions: key, speaker, gender, label, prediction, class probabilities."""
        return self.path / f"fold_{fold}_test_predictions.csv"

    def fold_files(self, fold: int | str = "*") -> list[Path]:
        """Every file of a fold (of every fold by default), partial writes included."""
        return sorted(self.path.glob(f"fold_{fold}[._]*")) + self.partial_writes(fold)

    def fold_result(self, fold: int) -> dict | None:
        """The fold's result; None while the fold is not finished."""
        return self._fold_state(fold)[0]

    def damage(self, fold: int) -> str | None:
        """Why a fold with a fold_k.json is not finished after all (it is done again); None where nothing is wrong."""
        return self._fold_state(fold)[1]

    def _fold_state(self, fold: int) -> tuple[dict | None, str | None]:
        """(the fold's result, why its fold_k.json does not count): a file that cannot be read, or a trained head's
        result without the head or its test predictions."""
        if not self.fold_json(fold).is_file():
            return None, None
        try:
            result = self.result_of(read_json(self.fold_json(fold)))
        except TrustSerError as err:
            return None, str(err)
        missing = [path.name for path in (self.head(fold), self.predictions(fold)) if not path.is_file()]
        if isinstance(result, dict) and "best_epoch" in result and missing:
            return None, f"{self.fold_json(fold)} holds the fold's result, but {' and '.join(missing)} is not there"
        return result, None

    def result_of(self, fold_json) -> dict | None:
        """The result inside a fold_k.json's content: under "best" where the folder trains heads."""
        if not isinstance(fold_json, dict):
            return None
        return fold_json.get("best") if self.trains else fold_json

    def fold_finished(self, fold: int) -> bool:
        return self.fold_result(fold) is not None


def finetune_folder(project_dir: str | Path, run: RunConfig | RunId) -> RunFolder:
    return RunFolder(finetune_dir(project_dir, run), trains=True)
