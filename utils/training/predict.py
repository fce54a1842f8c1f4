"""Emotion predictions on new audio from a trained run: every fold's model, probabilities averaged.

SpeechBrain-style use from Python:

    recognizer = EmotionRecognizer.from_run(RunConfig(dataset="iemocap", pretrain_model="wavlm", ...), project_dir)
    probabilities = recognizer.classify_files(["a.wav", "b.flac"])      # [N, classes], rows sum to 1

Audio of any sample rate, channel count and format soundfile reads is mixed down and resampled to 16 kHz as
preprocess_audio.py does, then cropped to --audio_duration as in training. The hidden states are rounded as
the run's test predictions saw them (fp16 where the feature cache stored them), so a file of the corpus gets the
probabilities of fold_k_test_predictions.csv.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from utils.data.audio import TARGET_SR, BadAudioError, read_audio, to_16k_mono
from utils.data.utterances import length_sorted_batches, pad_waveforms
from utils.data.corpora import get_corpus
from utils.core.errors import TrustSerError
from utils.core.io import write_csv
from utils.features.source import AudioBank, long_enough, to_device
from utils.runs.paths import finetune_folder
from utils.training.pipeline import check_trained, evaluation_source, load_trained, resolve_device
from utils.training.protocol import crop_seconds, fold_ids
from utils.runs.identity import RunConfig

log = logging.getLogger("trust-ser")
FILES_IN_MEMORY = 1024
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".au", ".opus", ".w64", ".caf"}


def find_audio(inputs: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for audio files (sorted)."""
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                            and not p.name.startswith("."))
        elif item.exists():
            found.append(item)
        else:
            raise TrustSerError(f"--audio {item} does not exist")
    if not found:
        raise TrustSerError(f"no audio files in {', '.join(inputs)} (looked for {', '.join(sorted(AUDIO_SUFFIXES))})")
    return found


def load_clip(path: Path, max_seconds: float) -> torch.Tensor:
    """16 kHz mono, cropped to the first max_seconds, as training saw the preprocessed file."""
    audio, sr = read_audio(path)
    return long_enough(path, torch.from_numpy(to_16k_mono(audio, sr)[: int(max_seconds * TARGET_SR)].copy()))


@dataclass
class EmotionRecognizer:
    run: RunConfig
    class_names: list[str]
    models: list  # (backbone, head) per fold; frozen runs share one backbone
    device: torch.device

    @classmethod
    def from_run(cls, run: RunConfig, project_dir: str, folds: list[int] | None = None) -> "EmotionRecognizer":
        """The run's fold checkpoints (all folds of the corpus by default)."""
        corpus = get_corpus(run.dataset, project_dir)
        device = resolve_device(run.device)
        trained = finetune_folder(project_dir, run)
        folds = folds or fold_ids(run, corpus)
        check_trained(run, trained, folds)
        models = []
        for fold in folds:
            backbone, head = load_trained(run, trained, fold, device, corpus.num_classes)
            if backbone.finetune == "frozen" and models:
                backbone = models[0][0]  # the same pretrained weights in every fold
            models.append((backbone, head))
        return cls(run, corpus.class_names, models, device)

    @torch.no_grad()
    def probabilities(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """[N, classes]: the folds' softmax outputs, averaged."""
        probs = torch.zeros(len(clips), len(self.class_names))
        audio = AudioBank(self.run.audio_duration, skip_bad=False)    # unused: batches arrive as waveforms
        sources = [evaluation_source(self.run, backbone, audio, self.device) for backbone, _ in self.models]
        for idx in length_sorted_batches([len(c) for c in clips], self.run.eval_batch_size):
            wav, lengths = pad_waveforms([clips[i] for i in idx])
            wav, shared = to_device(wav, self.device), None
            for source, (backbone, head) in zip(sources, self.models):
                if shared is None or backbone is not self.models[0][0]:
                    shared = source.finish(source.fetch_waveforms(wav, lengths))
                probs[idx] += torch.softmax(head(*shared).float(), dim=1).cpu()
        return probs / len(self.models)

    def classify_files(self, paths: list[Path], skip: list[str] | None = None) -> tuple[list[Path], torch.Tensor]:
        """Probabilities of the readable files; unreadable ones are named in `skip` (and logged). Files are read
        FILES_IN_MEMORY at a time, so any number of them fits in memory."""
        kept, probs = [], [torch.zeros(0, len(self.class_names))]
        for start in tqdm(range(0, len(paths), FILES_IN_MEMORY), desc="predict", unit="chunk",
                          disable=len(paths) <= FILES_IN_MEMORY):
            clips = []
            for path in paths[start:start + FILES_IN_MEMORY]:
                try:
                    clips.append(load_clip(path, crop_seconds(self.run, self.models[0][0])))
                    kept.append(path)
                except BadAudioError as err:
                    log.warning(f"skipping: {err}")
                    if skip is not None:
                        skip.append(str(err))
            if clips:
                probs.append(self.probabilities(clips))
        return kept, torch.cat(probs)


def write_predictions_csv(path: Path, files: list[Path], probs: torch.Tensor, class_names: list[str]) -> None:
    """One row per file: path, predicted emotion, one probability column per class."""
    lines = [["path", "prediction", *(f"prob_{name}" for name in class_names)]]
    for file, row in zip(files, probs.tolist()):
        lines.append([str(file), class_names[max(range(len(row)), key=row.__getitem__)], *(f"{p:.6f}" for p in row)])
    write_csv(path, lines)
