"""Split files -> labelled utterances with preprocessed audio paths; class weights; padded batches."""
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.data.corpora import get_corpus, preprocessed_name, split_command
from utils.core.config import config_flag
from utils.core.errors import TrustSerError
from utils.core.io import read_json
from utils.data.layout import SPLITS, audio_dir, split_path

log = logging.getLogger("trust-ser")


@dataclass(frozen=True)
class Utterance:
    key: str
    speaker: str
    gender: str
    path: str       # preprocessed 16 kHz mono file
    label: int


def read_split_file(path: Path, dataset: str, config: str | None = None) -> dict[str, list[list]]:
    """A split file: train, dev and test lists of [key, speaker, gender, path, label]; one line naming the file
    for anything else. config: the --config given, repeated in the command of the hint."""
    if not path.is_file():
        raise TrustSerError(f"split file {path} not found; run first: {split_command(dataset, config)}")
    split = read_json(path)
    if not isinstance(split, dict):
        raise TrustSerError(f"{path} is not a split file: expected lists under 'train', 'dev' and 'test'")
    for name in SPLITS:
        entries = split.get(name)
        if not isinstance(entries, list):
            raise TrustSerError(f"split file {path} has no '{name}' list")
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 5:
                raise TrustSerError(f"split file {path}: {name} entry {entry!r} is not [key, speaker, gender, path, "
                                    f"label]")
    return split


def load_fold(project_dir: str | Path, dataset: str, fold: int,
              config: str | None = None) -> dict[str, list[Utterance]]:
    """Read one fold's split file; keep the corpus' emotions, map them to class ids, log what was dropped.
    config: the --config given, repeated in the commands of the hints."""
    corpus = get_corpus(dataset, project_dir)
    path = split_path(project_dir, dataset, fold)
    split_dict = read_split_file(path, dataset, config)
    folder = audio_dir(project_dir, dataset)
    fold_data, dropped_by_split = {}, {}
    for split in SPLITS:
        kept, dropped = [], Counter()
        for entry in split_dict[split]:
            label = entry[4]
            if corpus.key_contains not in str(entry[0]):
                continue
            if label not in corpus.label_map:
                dropped[str(label)] += 1
                continue
            kept.append(Utterance(str(entry[0]), str(entry[1]), str(entry[2] or ""),
                                  str(folder / preprocessed_name(dataset, entry, split)), corpus.label_map[label]))
        if not kept:
            raise TrustSerError(f"split file {path}: fold {fold} has an empty {split} split after label mapping")
        fold_data[split], dropped_by_split[split] = kept, dropped
    if not folder.is_dir() or not any(folder.iterdir()):
        raise TrustSerError(f"no preprocessed audio in {folder}; run first: "
                            f"python3 preprocess_audio/preprocess_audio.py --dataset {dataset}{config_flag(config)}")
    _log_sizes_once(path, fold_data, dropped_by_split)
    return fold_data


_LOGGED_SPLIT_FILES: set[Path] = set()


def _log_sizes_once(path: Path, fold_data: dict, dropped: dict) -> None:
    """One line per split file and process (stages read a fold's file several times)."""
    if path in _LOGGED_SPLIT_FILES:
        return
    _LOGGED_SPLIT_FILES.add(path)
    other = sum((dropped[s] for s in SPLITS), Counter())
    log.info(f"{path.name}: " + ", ".join(f"{s} {len(fold_data[s])}" for s in SPLITS) + " utterances"
             + (f"; dropped {sum(other.values())} with other labels ({dict(other)})" if other else ""))


def class_weights(train: list[Utterance], num_classes: int) -> torch.Tensor:
    """Normalised inverse training frequency, as the original (a class absent from training gets weight 0)."""
    counts = torch.bincount(torch.tensor([u.label for u in train]), minlength=num_classes).float()
    inv = torch.where(counts > 0, counts.sum() / counts.clamp(min=1), torch.zeros_like(counts))
    return inv / inv.sum()


def pad_waveforms(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D waveforms to [B, T_max]; return lengths [B]."""
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        batch[i, : len(w)] = w
    return batch, lengths


def pad_features(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-utterance hidden states [L, F_i, D] -> [L, B, F_max, D] and mask [B, F_max] (True = real frame).
    One concatenation and one indexed write, wherever the batch is: no copy per utterance, nothing read back."""
    n_frames = torch.tensor([f.shape[1] for f in feats])
    L, _, D = feats[0].shape
    width = int(n_frames.max())
    mask = torch.arange(width)[None, :] < n_frames[:, None]
    batch = feats[0].new_zeros(L, len(feats) * width, D)
    rows = mask.flatten().nonzero().squeeze(1)          # the real frames' rows, in the concatenation's order
    batch[:, rows.to(batch.device)] = torch.cat(feats, dim=1)
    return batch.view(L, len(feats), width, D), mask.to(batch.device)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first) so padding stays small."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
