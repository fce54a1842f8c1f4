"""Tiny corpora in the layouts the six corpora are distributed in, with real 0.1 s WAV files.

Each make_<corpus>(root, ...) builds the corpus under `root` and returns the folder that
config.yml's data_dir.<name> must point at. `clutter=True` adds the real-world debris the split scripts
must survive (.DS_Store, AppleDouble ._ files, the distribution zip, ...).
"""
import csv
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000


def write_wav(path: Path, seconds: float = 0.1, sample_rate: int = SAMPLE_RATE) -> Path:
    """A short 16-bit mono noise file; its content depends on the file name, so files differ."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, 0.1 * rng.standard_normal(int(seconds * sample_rate)), sample_rate, subtype="PCM_16")
    return path


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence], quote_all: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC if quote_all else csv.QUOTE_MINIMAL)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _add_clutter(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"\x00\x05\x16\x07 not audio")


# --- IEMOCAP -------------------------------------------------------------------------------------------
# Per session: (dialog suffix, [(utterance suffix, label)]); dialog "Ses0{n}F_impro01" etc.
IEMOCAP_DIALOGS = [
    ("F_impro01", [("F000", "neu"), ("M000", "ang"), ("F001", "xxx")]),
    ("M_script01_1", [("F000", "exc"), ("M000", "sad"), ("M001", "hap")]),
]


def iemocap_utterances(session: int) -> list[tuple[str, str, str]]:
    """(dialog, utterance, label) of one session of make_iemocap's corpus, in label-file order."""
    return [(f"Ses0{session}{d}", f"Ses0{session}{d}_{u}", label)
            for d, utterances in IEMOCAP_DIALOGS for u, label in utterances]


def make_iemocap(root: Path, sessions: int = 5, clutter: bool = False) -> Path:
    """IEMOCAP_full_release/SessionN/{dialog/EmoEvaluation/<dialog>.txt, sentences/wav/<dialog>/<utt>.wav}."""
    corpus = root / "IEMOCAP_full_release"
    for n in range(1, sessions + 1):
        evaluation = corpus / f"Session{n}" / "dialog" / "EmoEvaluation"
        (evaluation / "Categorical").mkdir(parents=True, exist_ok=True)
        by_dialog: dict[str, list] = {}
        for dialog, utterance, label in iemocap_utterances(n):
            by_dialog.setdefault(dialog, []).append((utterance, label))
            write_wav(corpus / f"Session{n}" / "sentences" / "wav" / dialog / f"{utterance}.wav")
        for dialog, utterances in by_dialog.items():
            (evaluation / f"{dialog}.txt").write_text(_iemocap_label_file(utterances))
            # per-rater files live in subfolders and must not be read
            (evaluation / "Categorical" / f"{dialog}_e1_cat.txt").write_text(
                "".join(f"{u} :Neutral state; ()\n" for u, _ in utterances))
        if clutter:
            _add_clutter(evaluation, f"._Ses0{n}F_impro01.txt")
    return corpus


def _iemocap_label_file(utterances: list[tuple[str, str]]) -> str:
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    for i, (utterance, label) in enumerate(utterances):
        lines += [f"[{2.0 * i + 1:.4f} - {2.0 * i + 2.5:.4f}]\t{utterance}\t{label}\t[2.5000, 3.0000, 3.5000]",
                  "C-E1:\tNeutral state;\t()", "C-E3:\tNeutral state;\t()",
                  "A-E1:\tval 3; act 2; dom  3;\t()", ""]
    return "\n".join(lines) + "\n"


# --- CREMA-D -------------------------------------------------------------------------------------------
CREMA_D_SPEAKERS = list(range(1001, 1092))
_CREMA_EMOTIONS = [("ANG", "A"), ("NEU", "N"), ("SAD", "S"), ("HAP", "H")]
CREMA_D_TIE = "1001_IEO_HAP_HI"        # rated as a tie, 'N:S'
CREMA_D_UNRATED = "1002_IEO_NEU_XX"    # a wav without a summaryTable row
CREMA_D_BROKEN = "1076_MTI_SAD_XX"     # the corpus' empty recording


def crema_d_gender(speaker: int) -> str:
    return "Male" if speaker % 2 else "Female"


def crema_d_ratings(speakers: Sequence[int] = CREMA_D_SPEAKERS) -> dict[str, str]:
    """File name -> MultiModalVote of every rated file of make_crema_d's corpus: one per speaker, plus the tie."""
    votes = {f"{s}_DFA_{_CREMA_EMOTIONS[i % 4][0]}_XX": _CREMA_EMOTIONS[i % 4][1] for i, s in enumerate(speakers)}
    votes[CREMA_D_TIE] = "N:S"
    votes[CREMA_D_BROKEN] = "S"
    return votes


def make_crema_d(root: Path, speakers: Sequence[int] = CREMA_D_SPEAKERS, clutter: bool = False,
                 extra_votes: dict[str, str] | None = None) -> Path:
    """CREMA-D/{AudioWAV/*.wav, VideoDemographics.csv, processedResults/summaryTable.csv}; extra_votes: more
    rated files (name -> MultiModalVote)."""
    corpus = root / "CREMA-D"
    votes = {**crema_d_ratings(speakers), **(extra_votes or {})}
    for name in [*votes, CREMA_D_UNRATED]:
        write_wav(corpus / "AudioWAV" / f"{name}.wav")
    write_csv(corpus / "VideoDemographics.csv", ["ActorID", "Age", "Sex", "Race", "Ethnicity"],
              [[s, 30, crema_d_gender(s), "Caucasian", "Not Hispanic"] for s in speakers])
    write_csv(corpus / "processedResults" / "summaryTable.csv",
              ["", "FileName", "VoiceVote", "VoiceLevel", "FaceVote", "FaceLevel", "MultiModalVote",
               "MultiModalLevel"],
              [[str(i + 1), name, vote, 60.0, vote, 80.0, vote, 70.0] for i, (name, vote) in enumerate(votes.items())],
              quote_all=True)
    if clutter:
        _add_clutter(corpus / "AudioWAV", "._1003_DFA_NEU_XX.wav", ".DS_Store")
    return corpus


# --- RAVDESS -------------------------------------------------------------------------------------------
def ravdess_file(actor: int, emotion: int, intensity: int = 1) -> str:
    """03 (audio-only) - 01 (speech) - emotion - intensity - statement 01 - repetition 01 - actor."""
    return f"03-01-{emotion:02d}-{intensity:02d}-01-01-{actor:02d}.wav"


def make_ravdess(root: Path, actors: int = 24, emotions: Sequence[int] = (1, 3, 5), clutter: bool = False) -> Path:
    """Ravdess/Actor_XX/03-01-EE-II-SS-RR-XX.wav for actors 1..actors."""
    corpus = root / "Ravdess"
    for actor in range(1, actors + 1):
        for emotion in emotions:
            write_wav(corpus / f"Actor_{actor:02d}" / ravdess_file(actor, emotion))
    if clutter:
        _add_clutter(corpus, ".DS_Store", "Audio_Speech_Actors_01-24.zip")
        _add_clutter(corpus / "Actor_01", ".DS_Store")
    return corpus


# --- MSP-IMPROV ----------------------------------------------------------------------------------------
# Per session s: (sentence+target emotion, gender of the speaker, recording type, pairing, label)
_IMPROV_UTTERANCES = [("S01A", "F", "S", "FM01", "A"), ("S02H", "F", "R", "FM01", "H"),
                      ("S03N", "M", "P", "MF01", "N"), ("S04S", "M", "T", "MF01", "S"),
                      ("S05N", "M", "R", "MF02", "O")]


def msp_improv_utterances(session: int) -> list[tuple[str, str, str, str]]:
    """(name, speaker, recording type, label) of one session of make_msp_improv's corpus."""
    return [(f"MSP-IMPROV-{sent}-{g}{session:02d}-{rec}-{pair}", f"{g}{session:02d}", rec, label)
            for sent, g, rec, pair, label in _IMPROV_UTTERANCES]


def make_msp_improv(root: Path, sessions: int = 6) -> Path:
    """MSP-IMPROV/{Evalution.txt, Audio/sessionN/<S..>/<R|S|T|P>/MSP-IMPROV-....wav}; Evalution.txt in
    reverse session order, so the split script's sorting shows."""
    corpus = root / "MSP-IMPROV"
    blocks = []
    for session in range(sessions, 0, -1):
        for name, speaker, rec, label in msp_improv_utterances(session):
            write_wav(corpus / "Audio" / f"session{session}" / name.split("-")[2] / rec / f"{name}.wav")
            utd = name.replace("MSP-", "UTD-", 1)
            blocks.append(f"{utd}.avi; {label}; A:3.000000; V:2.500000; D:3.000000; N:1.000000\n"
                          f"Rater 1; {label}; Happy; A:3.000000; V:2.000000; D:3.000000\n"
                          f"Rater 2; {label}; A:3.000000; V:3.000000; D:3.000000\n")
    (corpus / "Evalution.txt").write_text("\n".join(blocks))
    return corpus


# --- MSP-Podcast ---------------------------------------------------------------------------------------
def msp_podcast_rows(dev_name: str = "Validation", numeric_speakers: bool = False) -> list[list]:
    """Rows of make_msp_podcast's label file: FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set.
    MSP-PODCAST_0009_* has no audio file."""
    rows = [["MSP-PODCAST_0001_0001.wav", "N", "127", "Female", "Train"],
            ["MSP-PODCAST_0001_0002.wav", "A", "127", "Female", "Train"],
            ["MSP-PODCAST_0002_0001.wav", "X", "13", "Male", "Train"],
            ["MSP-PODCAST_0003_0001.wav", "H", "55", "Male", dev_name],
            ["MSP-PODCAST_0003_0002.wav", "S", "55", "Male", dev_name],
            ["MSP-PODCAST_0004_0001.wav", "S", "70", "Female", "Test1"],
            ["MSP-PODCAST_0004_0002.wav", "N", "71", "Male", "Test1"],
            ["MSP-PODCAST_0005_0001.wav", "H", "80", "Female", "Test2"],
            ["MSP-PODCAST_0006_0001.wav", "N", "90", "Unknown", "Train"],
            ["MSP-PODCAST_0009_0001.wav", "A", "91", "Male", "Train"]]
    if not numeric_speakers:
        rows.insert(3, ["MSP-PODCAST_0007_0001.wav", "N", "Unknown", "Female", "Train"])
    return [[name, emo, "4.0", "3.5", "4.2", spk, gender, split] for name, emo, spk, gender, split in rows]


def make_msp_podcast(root: Path, spelling: str = "concensus", dev_name: str = "Validation",
                     numeric_speakers: bool = False) -> Path:
    """MSP-Podcast/{Labels/labels_<spelling>.csv, Audios/*.wav}."""
    corpus = root / "MSP-Podcast"
    rows = msp_podcast_rows(dev_name, numeric_speakers)
    write_csv(corpus / "Labels" / f"labels_{spelling}.csv",
              ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"], rows)
    for row in rows:
        if not row[0].startswith("MSP-PODCAST_0009"):
            write_wav(corpus / "Audios" / row[0])
    return corpus


# --- MELD ----------------------------------------------------------------------------------------------
# split -> rows (Dialogue_ID, Utterance_ID, Speaker, Emotion, has audio)
MELD_ROWS = {
    "train": [(0, 0, "Ross", "neutral", True), (0, 1, "Chandler", "joy", True), (0, 2, "Ross", "anger", True),
              (1, 0, "Monica", "sadness", True), (1, 1, "Chandler", "surprise", True),
              (1, 2, "Ross", "neutral", False), (2, 0, "All", "joy", True)],
    "dev": [(0, 0, "Phoebe", "fear", True), (0, 1, "Joey", "disgust", True)],
    "test": [(0, 0, "Rachel", "joy", True), (0, 1, "Rachel", "neutral", True), (1, 0, "Joey", "anger", True)],
}
MELD_AUDIO_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def make_meld(root: Path) -> Path:
    """MELD.Raw/{train,dev,test}_sent_emo.csv and <split folder>/waves/dia<D>_utt<U>.wav."""
    corpus = root / "MELD.Raw"
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
              "Episode", "StartTime", "EndTime"]
    for split, rows in MELD_ROWS.items():
        (corpus / MELD_AUDIO_FOLDERS[split] / "waves").mkdir(parents=True, exist_ok=True)
        table = [[i + 1, f'Oh, "really", line {i}?', speaker, emotion, "neutral", dialog, utterance, 1, 1,
                  "00:00:01,000", "00:00:02,000"]
                 for i, (dialog, utterance, speaker, emotion, _) in enumerate(rows)]
        write_csv(corpus / f"{split}_sent_emo.csv", header, table)
        for dialog, utterance, _, _, has_audio in rows:
            if has_audio:
                write_wav(corpus / MELD_AUDIO_FOLDERS[split] / "waves" / f"dia{dialog}_utt{utterance}.wav")
    return corpus
