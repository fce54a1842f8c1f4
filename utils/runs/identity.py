"""The typed description of a run that every library function takes: what defines it (its folder, its results)
and how it is executed. Stage scripts parse their flags into it; the benchmark and tests build it directly."""
from argparse import Namespace
from dataclasses import asdict, dataclass, fields, replace

import torch


@dataclass(frozen=True)
class RunConfig:
    # what the run is (names its folder, recorded in results.json)
    dataset: str = "iemocap"
    pretrain_model: str = "wav2vec2_0"
    pretrain_path: str | None = None
    random_init: bool = False
    tiny: bool = False
    finetune: str = "frozen"
    downstream_model: str = "cnn"
    learning_rate: float = 0.0002
    num_epochs: int = 50
    conv_layers: int = 3
    hidden_size: int = 256
    pooling: str = "att"
    audio_duration: int = 6
    batch_size: int = 64
    protocol: str = "fixed"      # utils/training/protocol.py: "original" reproduces the original's procedure
    # how it is executed (does not change its folder)
    seeds: int | None = None    # runs over a one-split corpus (run k = fold k, seed 8k); None: the protocol's
    config: str | None = None
    eval_batch_size: int = 32
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    no_cache: bool = False
    cache_gb: float | None = None       # disk the feature cache may take (default: from free space)
    memory_gb: float | None = None      # host/GPU memory holding features (default: from free memory)
    skip_bad: bool = False
    overwrite: bool = False

    @classmethod
    def from_args(cls, args: Namespace) -> "RunConfig":
        """The run a stage script's parsed flags describe (stage-specific flags are left out)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def but(self, **changes) -> "RunConfig":
        return replace(self, **changes)

    def defining_flags(self) -> dict:
        """The flags that define the run (not where or how fast it ran), as results.json records them."""
        return {k: v for k, v in asdict(self).items() if k in DEFINING}


DEFINING = ["dataset", "pretrain_model", "pretrain_path", "random_init", "tiny", "finetune", "downstream_model",
            "learning_rate", "num_epochs", "conv_layers", "hidden_size", "pooling", "audio_duration", "batch_size", "protocol"]
