"""The six train_split_gen scripts, run as the user runs them, on tiny corpora in the distributed layouts."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corpus_fixtures import (make_crema_d, make_iemocap, make_meld, make_msp_improv,  # noqa: E402
                             make_msp_podcast, make_ravdess)
from utils.data.splits import kfold, last_fifth, last_one  # noqa: E402
from synthetic_project import load_script  # noqa: E402
from utils.core.errors import TrustSerError  # noqa: E402

SCRIPTS = REPO / "train_split_gen"
SPLITS = ["train", "dev", "test"]


def write_config(tmp_path: Path, name: str, corpus: Path) -> Path:
    # project_dir is relative: it must resolve against the config's folder, not the working directory
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"data_dir": {name: str(corpus)}, "project_dir": "project"}))
    return config


def run_script(script: str, config: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, str(SCRIPTS / script), "--config", str(config)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=120)


def run_split(script: str, name: str, corpus: Path, tmp_path: Path) -> tuple[Path, str]:
    """Run one split script; return (the train_split folder, its stderr log)."""
    result = run_script(script, write_config(tmp_path, name, corpus), tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "project" / "train_split", result.stderr


def read_split(folder: Path, file_name: str) -> dict:
    split = json.loads((folder / file_name).read_text())
    assert list(split) == SPLITS
    return split


def check_entries(split: dict, speaker_type: type, label_type: type) -> None:
    """[key, speaker_id, gender, absolute path of an existing wav, label] with the original's types."""
    for entry in (e for name in SPLITS for e in split[name]):
        key, speaker, gender, path, label = entry
        assert isinstance(key, str) and type(speaker) is speaker_type and type(label) is label_type, entry
        assert gender in ("female", "male") or (gender == "" and speaker_type is str), entry
        assert Path(path).is_absolute() and Path(path).is_file() and path.endswith(".wav"), entry


def groups_by_split(split: dict, group_of) -> dict[str, set]:
    return {name: {group_of(e) for e in split[name]} for name in SPLITS}


@pytest.mark.slow
def test_iemocap_leave_one_session_out(tmp_path):
    corpus = make_iemocap(tmp_path / "data", clutter=True)
    out, _ = run_split("iemocap.py", "iemocap", corpus, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [f"iemocap_fold{k}.json" for k in range(1, 6)]
    # fold k: test Session k; dev the last training session
    membership = {1: ({1}, {5}), 2: ({2}, {5}), 3: ({3}, {5}), 4: ({4}, {5}), 5: ({5}, {4})}
    for k, (test, dev) in membership.items():
        split = read_split(out, f"iemocap_fold{k}.json")
        check_entries(split, str, str)
        sessions = groups_by_split(split, lambda e: int(e[1][len("iemocap_Ses"):][:2]))
        assert sessions == {"train": {1, 2, 3, 4, 5} - test - dev, "dev": dev, "test": test}
        assert [len(split[name]) for name in SPLITS] == [18, 6, 6]
        train_sessions = [int(e[0][3:5]) for e in split["train"]]
        assert train_sessions == sorted(train_sessions)

    test = read_split(out, "iemocap_fold1.json")["test"]
    wav = corpus / "Session1" / "sentences" / "wav"
    assert sorted(test) == sorted([
        ["Ses01F_impro01_F000", "iemocap_Ses01F", "female", str(wav / "Ses01F_impro01/Ses01F_impro01_F000.wav"), "neu"],
        ["Ses01F_impro01_M000", "iemocap_Ses01M", "male", str(wav / "Ses01F_impro01/Ses01F_impro01_M000.wav"), "ang"],
        ["Ses01F_impro01_F001", "iemocap_Ses01F", "female", str(wav / "Ses01F_impro01/Ses01F_impro01_F001.wav"), "xxx"],
        ["Ses01M_script01_1_F000", "iemocap_Ses01F", "female",
         str(wav / "Ses01M_script01_1/Ses01M_script01_1_F000.wav"), "exc"],
        ["Ses01M_script01_1_M000", "iemocap_Ses01M", "male",
         str(wav / "Ses01M_script01_1/Ses01M_script01_1_M000.wav"), "sad"],
        ["Ses01M_script01_1_M001", "iemocap_Ses01M", "male",
         str(wav / "Ses01M_script01_1/Ses01M_script01_1_M001.wav"), "hap"]])
    # label-file line order is kept
    assert [e[0][-4:] for e in test if "impro01" in e[0]] == ["F000", "M000", "F001"]


@pytest.mark.slow
def test_crema_d_speaker_folds(tmp_path):
    corpus = make_crema_d(tmp_path / "data", clutter=True)
    out, log = run_split("crema-d.py", "crema_d", corpus, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [f"crema_d_fold{k}.json" for k in range(1, 6)]
    # KFold over 1001..1091 (19, 18, 18, 18, 18 speakers); dev = last 15 training speakers
    tests = [range(1001, 1020), range(1020, 1038), range(1038, 1056), range(1056, 1074), range(1074, 1092)]
    devs = [range(1077, 1092)] * 4 + [range(1059, 1074)]
    everyone = set(range(1001, 1092))
    for k in range(1, 6):
        split = read_split(out, f"crema_d_fold{k}.json")
        check_entries(split, int, str)
        test, dev = set(tests[k - 1]), set(devs[k - 1])
        assert groups_by_split(split, lambda e: e[1]) == {"train": everyone - test - dev, "dev": dev, "test": test}
        keys = [e[0] for name in SPLITS for e in split[name]]
        assert len(keys) == 92   # one file per speaker, plus the tie
        assert not {"1076_MTI_SAD_XX", "1002_IEO_NEU_XX", "._1003_DFA_NEU_XX"} & set(keys)
        assert split["train"] == sorted(split["train"])

    fold1 = read_split(out, "crema_d_fold1.json")
    assert [len(fold1[name]) for name in SPLITS] == [57, 15, 20]
    by_key = {e[0]: e for e in fold1["test"]}
    assert by_key["1001_IEO_HAP_HI"][1:] == [1001, "male", str(corpus / "AudioWAV" / "1001_IEO_HAP_HI.wav"), "N:S"]
    assert by_key["1001_DFA_ANG_XX"][1:] == [1001, "male", str(corpus / "AudioWAV" / "1001_DFA_ANG_XX.wav"), "A"]
    assert by_key["1002_DFA_NEU_XX"][1:] == [1002, "female", str(corpus / "AudioWAV" / "1002_DFA_NEU_XX.wav"), "N"]
    assert "1002_IEO_NEU_XX.wav" in log   # the wav without a summaryTable row is reported


@pytest.mark.slow
def test_ravdess_actor_folds_ignore_clutter(tmp_path):
    corpus = make_ravdess(tmp_path / "data", clutter=True)
    out, _ = run_split("ravdess.py", "ravdess", corpus, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [f"ravdess_fold{k}.json" for k in range(1, 6)]
    # KFold over actors 1..24 (5, 5, 5, 5, 4); dev = last ceil(n/5) = 4 training actors
    tests = [range(1, 6), range(6, 11), range(11, 16), range(16, 21), range(21, 25)]
    devs = [range(21, 25)] * 4 + [range(17, 21)]
    for k in range(1, 6):
        split = read_split(out, f"ravdess_fold{k}.json")
        check_entries(split, str, int)
        test, dev = set(tests[k - 1]), set(devs[k - 1])
        actors = groups_by_split(split, lambda e: int(e[1][len("ravdess_Actor_"):]))
        assert actors == {"train": set(range(1, 25)) - test - dev, "dev": dev, "test": test}
        assert sum(len(split[name]) for name in SPLITS) == 24 * 3

    by_key = {(e[1], e[0]): e for e in read_split(out, "ravdess_fold1.json")["test"]}
    assert by_key[("ravdess_Actor_01", "03-01-03-01-01-01-01.wav")] == [
        "03-01-03-01-01-01-01.wav", "ravdess_Actor_01", "male", str(corpus / "Actor_01" / "03-01-03-01-01-01-01.wav"), 3]
    assert by_key[("ravdess_Actor_02", "03-01-05-01-01-01-02.wav")][2:] == [
        "female", str(corpus / "Actor_02" / "03-01-05-01-01-01-02.wav"), 5]
    assert sorted(e[4] for e in by_key.values()) == [1] * 5 + [3] * 5 + [5] * 5


@pytest.mark.slow
def test_msp_improv_leave_one_session_out(tmp_path):
    corpus = make_msp_improv(tmp_path / "data")
    out, _ = run_split("msp-improv.py", "msp-improv", corpus, tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [f"msp-improv_fold{k}.json" for k in range(1, 7)]
    for k in range(1, 7):
        split = read_split(out, f"msp-improv_fold{k}.json")
        check_entries(split, str, str)
        dev = 6 if k < 6 else 5
        sessions = groups_by_split(split, lambda e: int(e[1][-2:]))
        assert sessions == {"train": set(range(1, 7)) - {k, dev}, "dev": {dev}, "test": {k}}
        assert [len(split[name]) for name in SPLITS] == [20, 5, 5]
        for name in SPLITS:   # entries sorted by utterance name
            assert [e[0] for e in split[name]] == sorted(e[0] for e in split[name])

    audio = corpus / "Audio" / "session1"
    assert read_split(out, "msp-improv_fold1.json")["test"] == [
        ["MSP-IMPROV-S01A-F01-S-FM01", "msp_improv_F01", "female", str(audio / "S01A/S/MSP-IMPROV-S01A-F01-S-FM01.wav"), "A"],
        ["MSP-IMPROV-S02H-F01-R-FM01", "msp_improv_F01", "female", str(audio / "S02H/R/MSP-IMPROV-S02H-F01-R-FM01.wav"), "H"],
        ["MSP-IMPROV-S03N-M01-P-MF01", "msp_improv_M01", "male", str(audio / "S03N/P/MSP-IMPROV-S03N-M01-P-MF01.wav"), "N"],
        ["MSP-IMPROV-S04S-M01-T-MF01", "msp_improv_M01", "male", str(audio / "S04S/T/MSP-IMPROV-S04S-M01-T-MF01.wav"), "S"],
        ["MSP-IMPROV-S05N-M01-R-MF02", "msp_improv_M01", "male", str(audio / "S05N/R/MSP-IMPROV-S05N-M01-R-MF02.wav"), "O"]]


@pytest.mark.slow
@pytest.mark.parametrize("spelling, dev_name, numeric_speakers", [
    ("concensus", "Validation", False),     # as distributed with the original's version
    ("consensus", "Development", True),     # newer releases; a speaker column without 'Unknown'
])
def test_msp_podcast_official_split(tmp_path, spelling, dev_name, numeric_speakers):
    corpus = make_msp_podcast(tmp_path / "data", spelling, dev_name, numeric_speakers)
    out, log = run_split("msp-podcast.py", "msp-podcast", corpus, tmp_path)
    assert [p.name for p in out.iterdir()] == ["msp-podcast.json"]
    split = read_split(out, "msp-podcast.json")
    check_entries(split, str, str)

    def entry(name, speaker, gender, label):
        return [name, f"msp_podcast_{speaker}", gender, str(corpus / "Audios" / name), label]
    # Test2, the unknown speaker/gender rows and the row without audio are left out
    assert split == {
        "train": [entry("MSP-PODCAST_0001_0001.wav", 127, "female", "N"),
                  entry("MSP-PODCAST_0001_0002.wav", 127, "female", "A"),
                  entry("MSP-PODCAST_0002_0001.wav", 13, "male", "X")],
        "dev": [entry("MSP-PODCAST_0003_0001.wav", 55, "male", "H"),
                entry("MSP-PODCAST_0003_0002.wav", 55, "male", "S")],
        "test": [entry("MSP-PODCAST_0004_0001.wav", 70, "female", "S"),
                 entry("MSP-PODCAST_0004_0002.wav", 71, "male", "N")]}
    assert "MSP-PODCAST_0009_0001.wav" in log


@pytest.mark.slow
def test_meld_official_split_grouped_by_speaker(tmp_path):
    corpus = make_meld(tmp_path / "data")
    out, log = run_split("meld.py", "meld", corpus, tmp_path)
    assert [p.name for p in out.iterdir()] == ["meld.json"]
    split = read_split(out, "meld.json")
    check_entries(split, str, str)

    def entry(folder, key, speaker, label):
        return [key, f"meld_{speaker}", "", str(corpus / folder / "waves" / f"{key}.wav"), label]
    # speakers in sorted order, each speaker's rows in file order; dia1_utt2 has no audio
    assert split == {
        "train": [entry("train_splits", "dia2_utt0", "All", "joy"),
                  entry("train_splits", "dia0_utt1", "Chandler", "joy"),
                  entry("train_splits", "dia1_utt1", "Chandler", "surprise"),
                  entry("train_splits", "dia1_utt0", "Monica", "sadness"),
                  entry("train_splits", "dia0_utt0", "Ross", "neutral"),
                  entry("train_splits", "dia0_utt2", "Ross", "anger")],
        "dev": [entry("dev_splits_complete", "dia0_utt1", "Joey", "disgust"),
                entry("dev_splits_complete", "dia0_utt0", "Phoebe", "fear")],
        "test": [entry("output_repeated_splits_test", "dia1_utt0", "Joey", "anger"),
                 entry("output_repeated_splits_test", "dia0_utt0", "Rachel", "joy"),
                 entry("output_repeated_splits_test", "dia0_utt1", "Rachel", "neutral")]}
    assert "dia1_utt2" in log


@pytest.mark.slow
def test_missing_corpus_folder_is_a_one_line_error(tmp_path):
    missing = tmp_path / "no_such_corpus"
    result = run_script("iemocap.py", write_config(tmp_path, "iemocap", missing), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0], result.stderr
    assert not (tmp_path / "project").exists()


def _unreadable_iemocap(root: Path) -> Path:
    corpus = make_iemocap(root, sessions=2)
    (corpus / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt").write_bytes(b"\xff\xfe[\x00bad\n")
    return corpus


def _empty(root: Path) -> Path:
    root.mkdir(parents=True)
    return root


def _remove(path: str):
    def build(root: Path, make) -> Path:
        corpus = make(root)
        target = corpus / path
        if target.is_dir():
            for child in sorted(target.rglob("*"), reverse=True):
                child.unlink() if child.is_file() else child.rmdir()
            target.rmdir()
        else:
            target.unlink()
        return corpus
    return build


@pytest.mark.parametrize("script, name, build, message", [
    ("iemocap.py", "iemocap", _empty, "has no Session1/dialog/EmoEvaluation (is data_dir.iemocap the "
                                      "IEMOCAP_full_release folder?)"),
    ("iemocap.py", "iemocap", _unreadable_iemocap, "Ses02F_impro01.txt is unreadable"),
    ("crema-d.py", "crema_d", lambda r: _remove("processedResults/summaryTable.csv")(r, make_crema_d),
     "summaryTable.csv not found"),
    ("ravdess.py", "ravdess", _empty, "has no Actor_XX folders"),
    ("msp-improv.py", "msp-improv", lambda r: _remove("Evalution.txt")(r, make_msp_improv), "Evalution.txt not found"),
    ("msp-improv.py", "msp-improv", lambda r: _remove("Audio")(r, make_msp_improv), "has no Audio folder"),
    ("msp-podcast.py", "msp-podcast", lambda r: _remove("Labels")(r, make_msp_podcast),
     "has no Labels/labels_concensus.csv"),
    ("meld.py", "meld", lambda r: _remove("dev_splits_complete")(r, make_meld), "has no dev_splits_complete/waves"),
])
def test_bad_corpus_gives_an_error_naming_the_path(tmp_path, monkeypatch, script, name, build, message):
    corpus = build(tmp_path / "data" / name)
    monkeypatch.setattr(sys, "argv", [script, "--config", str(write_config(tmp_path, name, corpus))])
    with pytest.raises(TrustSerError) as err:
        load_script(SCRIPTS / script).main()
    assert message in str(err.value) and str(corpus) in str(err.value) and "\n" not in str(err.value)


def test_kfold_tests_contiguous_blocks_the_first_ones_longer():
    folds = kfold(list("abcdefg"), 5, last_one)      # scikit-learn's KFold without shuffling, as the original
    assert [f.test for f in folds] == [("a", "b"), ("c", "d"), ("e",), ("f",), ("g",)]
    assert folds[0].dev == ("g",) and folds[4].train == ("a", "b", "c", "d", "e")


def test_dev_is_taken_from_the_end_of_the_training_groups():
    sessions = kfold(["s1", "s2", "s3", "s4", "s5"], 5, last_one)
    assert [(f.train, f.dev, f.test) for f in sessions[::4]] == [
        (("s2", "s3", "s4"), ("s5",), ("s1",)), (("s1", "s2", "s3"), ("s4",), ("s5",))]
    speakers = kfold(list(range(1001, 1092)), 5, last_fifth)
    assert [len(f.dev) for f in speakers] == [15] * 5      # ceil(72/5) and ceil(73/5), as the original
    assert speakers[0].split_of(1077) == "dev" and speakers[0].split_of(1076) == "train"
    assert speakers[0].split_of(2000) == "train"            # unknown groups train, as the original


def mark_preprocessed(project: Path, corpus: str) -> None:
    """load_fold refuses a corpus whose audio folder is empty (not preprocessed); these tests read splits only."""
    folder = project / "audio" / corpus
    folder.mkdir(parents=True)
    (folder / "placeholder.wav").touch()


@pytest.mark.slow
def test_iemocap_impro_is_iemocaps_improvised_sessions(tmp_path):
    """The original's iemocap_impro: iemocap_fold<k>.json, keys containing "impro", IEMOCAP's four classes."""
    from utils.data.utterances import load_fold
    out, _ = run_split("iemocap.py", "iemocap", make_iemocap(tmp_path / "data"), tmp_path)
    mark_preprocessed(out.parent, "iemocap")
    for k in range(1, 6):
        full, impro = load_fold(out.parent, "iemocap", k), load_fold(out.parent, "iemocap_impro", k)
        for name in SPLITS:
            assert impro[name] == [u for u in full[name] if "impro" in u.key] != []
    test = load_fold(out.parent, "iemocap_impro", 1)["test"]
    assert [(u.key, u.label) for u in test] == [("Ses01F_impro01_F000", 0), ("Ses01F_impro01_M000", 2)]
    assert Path(test[0].path) == out.parent / "audio" / "iemocap" / "Ses01F_impro01_F000.wav"


@pytest.mark.slow
def test_crema_d_complete_keeps_fear_and_disgust(tmp_path):
    """The original's crema_d_complete: crema_d_fold<k>.json with six classes N A S H F D."""
    from utils.data.utterances import load_fold
    from utils.data.corpora import get_corpus
    extra = {"1001_DFA_FEA_XX": "F", "1001_DFA_DIS_XX": "D", "1002_DFA_FEA_XX": "F"}
    out, _ = run_split("crema-d.py", "crema_d", make_crema_d(tmp_path / "data", extra_votes=extra), tmp_path)
    mark_preprocessed(out.parent, "crema_d")
    four, six = load_fold(out.parent, "crema_d", 1)["test"], load_fold(out.parent, "crema_d_complete", 1)["test"]
    assert get_corpus("crema_d_complete").class_names == ["N", "A", "S", "H", "F", "D"]
    assert {u.key: u.label for u in six} == {**{u.key: u.label for u in four}, "1001_DFA_FEA_XX": 4,
                                              "1001_DFA_DIS_XX": 5, "1002_DFA_FEA_XX": 4}
    assert all(Path(u.path).parent == out.parent / "audio" / "crema_d" for u in six)
