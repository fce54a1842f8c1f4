"""Perturbation names of the robustness stage (utils/trust/robustness.py applies them): kind, then its setting as
an integer with its unit. Without torch: the report reads the names back from results.json."""
import re
from dataclasses import dataclass

from utils.core.errors import TrustSerError

UNITS = {"white": "db", "pink": "db", "noise": "db", "babble": "db", "reverb": "ms", "telephone": "",
         "clip": "pct", "gain": "db"}
ADDITIVE = ("white", "pink", "noise", "babble")
DEFAULT_PERTURBATIONS = ("white_20db,white_10db,white_0db,pink_20db,pink_10db,pink_0db,babble_10db,"
                         "reverb_300ms,reverb_800ms,telephone,clip_25pct,gain_-20db")
_NAME = re.compile(r"^([a-z]+)(?:_([+-]?\d+)(db|ms|pct))?$")


@dataclass(frozen=True)
class Perturbation:
    kind: str
    value: int | None = None        # SNR or gain (dB), RT60 (ms), clipping level (% of peak); None: telephone

    @property
    def name(self) -> str:
        return self.kind if self.value is None else f"{self.kind}_{self.value}{UNITS[self.kind]}"

    @property
    def snr_db(self) -> float | None:
        return float(self.value) if self.kind in ADDITIVE else None


def parse_perturbations(spec: str, noise_dir: str | None = None) -> list[Perturbation]:
    """'white_20db,reverb_300ms,telephone' -> Perturbations. With a noise folder, the white and pink entries become
    real noise at the same SNRs (each SNR once)."""
    chosen = []
    for name in (x.strip() for x in spec.split(",") if x.strip()):
        p = perturbation_of(name)
        if noise_dir and p.kind in ("white", "pink"):
            p = Perturbation("noise", p.value)
        if p.kind == "noise" and not noise_dir:
            raise TrustSerError(f"--perturbations {name}: real noise needs --noise_dir")
        if p.kind == "clip" and not 0 < p.value < 100:
            raise TrustSerError(f"--perturbations {name}: the clipping level is a percentage of the peak, 1..99")
        if p.kind == "reverb" and p.value <= 0:
            raise TrustSerError(f"--perturbations {name}: RT60 must be positive")
        if p not in chosen:
            chosen.append(p)
    if not chosen:
        raise TrustSerError("--perturbations is empty")
    return chosen


def perturbation_of(name: str) -> Perturbation:
    """The Perturbation a name (Perturbation.name) stands for."""
    match = _NAME.match(name)
    if not match or match.group(1) not in UNITS or (match.group(3) or "") != UNITS[match.group(1)]:
        raise TrustSerError(f"--perturbations: '{name}' is not one of "
                            f"{', '.join(k + ('_<int>' + u if u else '') for k, u in UNITS.items())}")
    return Perturbation(match.group(1), None if match.group(2) is None else int(match.group(2)))


def perturbation_keys(perturbations: list[Perturbation]) -> list[str]:
    """Each perturbation's result keys (results.json averages them over folds, beside the stage's own)."""
    per = ["uar", "uar_drop", "changed_fraction", "measured_snr_db", "level_change_db"]
    return [f"perturbations.{p.name}.{k}" for p in perturbations for k in per]
