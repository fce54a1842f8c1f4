"""The trust-stage table and the stage skeleton: what a stage writes is what the profile reads back."""
import itertools
import logging
import re
from argparse import Namespace

import pytest

from utils.core.errors import TrustSerError
from utils.core.io import read_json, write_json
from utils.data.corpora import get_corpus
from synthetic_project import load_script
from utils.reporting.profile import table_rows
from utils.runs.cli import base_parser
from utils.runs.identity import RunConfig
from utils.runs.paths import RunId
from utils.runs.stages import (FAIRNESS_GROUPS, FAIRNESS_METRICS, PRIVACY_PROBES, STAGE, STAGES, Variant, has_key,
                               measure)
from utils.training.metrics import _set_dotted
from utils.training.pipeline import Stage, aggregate, run_stage

VARIANTS = [Variant(privacy_probe=probe, fairness_group=group, fairness_metric=metric)
            for probe, group, metric in itertools.product(PRIVACY_PROBES, FAIRNESS_GROUPS, FAIRNESS_METRICS)]


def _stage(project_dir, folds=(1, 2, 3), aggregate_only=False, overwrite=False) -> Stage:
    run = RunConfig(dataset="iemocap", pretrain_model="apc", overwrite=overwrite)
    corpus = get_corpus("iemocap")
    return Stage(Namespace(aggregate_only=aggregate_only), run, {"project_dir": str(project_dir)}, corpus,
                 list(folds), corpus.fold_ids())


def _result(trust, value: float) -> dict:
    """A fold result with every key the stage declares, each = value, wrapped as its fold_k.json holds it."""
    result = {}
    for key in trust.result_keys:
        _set_dotted(result, key, value)
    return {"best": result, "0": {"train": {}}} if trust.trains else result


def test_every_axis_reads_a_key_its_stage_writes():
    assert len({s.key for s in STAGES}) == len({s.column for s in STAGES}) == len(STAGES)
    for trust, variant in itertools.product(STAGES, VARIANTS):
        assert trust.value_key(variant) in trust.result_keys, (trust.key, variant)
        assert trust.describe(variant) and trust.title
    assert STAGE["privacy"].value_key(Variant(privacy_probe="linear")) == "linear_probe.uar"
    assert STAGE["fairness"].value_key(Variant(fairness_group="gender", fairness_metric="demographic_parity")) \
        == "gender.demographic_parity"
    assert STAGE["uar"].natural_range(4) == (25.0, 100.0)
    assert STAGE["privacy"].natural_range(4) == (50.0, 100.0)
    assert STAGE["gflops"].natural_range(4)[1] == float("inf")


@pytest.mark.parametrize("trust", [s for s in STAGES if s.per_fold], ids=lambda s: s.key)
def test_skeleton_writes_what_the_profile_reads(tmp_path, trust):
    """Folds 1-3 evaluated with values 10, 20, 30: results.json averages them, measure() reads the average back
    through the same table entry (value x the axis' scale), for every variant's key."""
    calls = []

    def evaluate(fold):
        calls.append(fold)
        return _result(trust, 10.0 * fold)

    results = run_stage(_stage(tmp_path), trust, evaluate, meta={"bootstrap": 7})
    assert calls == [1, 2, 3]
    assert results["meta"]["folds_done"] == [1, 2, 3] and results["meta"]["folds_missing"] == [4, 5]
    assert results["meta"]["bootstrap"] == 7 and results["meta"]["flags"]["pretrain_model"] == "apc"
    run = RunId.of(_stage(tmp_path).run)
    assert read_json(trust.result_path(tmp_path, run))["average"] == results["average"]
    for variant in VARIANTS:
        m = measure(trust, tmp_path, run, variant)
        assert m.value == pytest.approx(20.0 * trust.scale)
        assert m.std == pytest.approx(trust.scale * (200 / 3) ** 0.5, rel=1e-5)    # population std of 10, 20, 30
        assert m.folds == 3


def test_a_missing_value_says_why_where_the_folds_say_it(tmp_path):
    trust = STAGE["fairness"]

    def evaluate(fold):
        result = _result(trust, None)
        result["speaker"]["reason"] = "only one group ('20')" if fold == 1 else None
        return result

    run_stage(_stage(tmp_path, folds=(1, 2)), trust, evaluate)
    note = measure(trust, tmp_path, RunId.of(_stage(tmp_path).run), Variant()).note
    assert note.endswith("has no number at average.speaker.statistical_parity (fold 1: only one group ('20'))")


def test_a_kept_result_of_other_settings_stops_the_stage(tmp_path):
    trust = STAGE["fairness"]
    folder = trust.folder(tmp_path, _stage(tmp_path).run)
    evaluate = lambda fold: _result(trust, 10.0 * fold)    # noqa: E731
    run_stage(_stage(tmp_path, folds=(1, 2)), trust, evaluate, settings={"bootstrap": 1000})
    assert read_json(folder.fold_json(1))["settings"] == {"bootstrap": 1000}
    run_stage(_stage(tmp_path, folds=(3,)), trust, evaluate, settings={"bootstrap": 1000})     # the same: resumes
    for stage, folds in [(_stage(tmp_path, folds=(4,)), "1,2,3"), (_stage(tmp_path, aggregate_only=True), "1,2,3"),
                         (_stage(tmp_path, folds=(1,), overwrite=True), "2,3")]:
        with pytest.raises(TrustSerError) as err:
            run_stage(stage, trust, evaluate, settings={"bootstrap": 50})
        assert f"other settings (bootstrap 1000 (here 50)); redo with --overwrite --folds {folds}," in str(err.value)
    assert not folder.fold_json(4).exists() and read_json(folder.fold_json(1))["settings"] == {"bootstrap": 1000}
    results = run_stage(_stage(tmp_path, folds=(1, 2, 3), overwrite=True), trust, evaluate, settings={"bootstrap": 50})
    assert {results[f]["settings"]["bootstrap"] for f in "123"} == {50}


def test_a_kept_per_run_result_of_other_settings_stops_the_stage(tmp_path):
    trust = STAGE["gflops"]
    measured = lambda fold: _result(trust, 1.5)     # noqa: E731
    run_stage(_stage(tmp_path), trust, measured, settings={"input_seconds": 6.0})
    assert run_stage(_stage(tmp_path), trust, measured, settings={"input_seconds": 6})["settings"] == \
        {"input_seconds": 6.0}
    with pytest.raises(TrustSerError, match=r"other settings \(input_seconds 6.0 \(here 10.0\)\); redo with --overwrite"):
        run_stage(_stage(tmp_path), trust, measured, settings={"input_seconds": 10.0})
    redone = run_stage(_stage(tmp_path, overwrite=True), trust, measured, settings={"input_seconds": 10.0})
    assert redone["settings"] == {"input_seconds": 10.0}


# every flag a trust script adds to the shared ones, and how it stays apart in results: in the folder's name, in
# the saved settings, as result keys of its own, or not changing a number
STAGE_FLAGS = {
    "trustworthy/fairness/fairness_evaluation.py": {"--run": "names the run", "--bootstrap": "settings",
                                                    "--group_by": "result keys of its own (extra_keys)"},
    "trustworthy/safety/adversarial_attack.py": {"--run": "names the run", "--attack_method": "folder", "--snr": "folder",
                                                 "--pgd_steps": "settings", "--fp32": "settings (precision)"},
    "trustworthy/privacy/gender_inference.py": {"--run": "names the run", "--privacy_attack": "folder",
                                                "--bootstrap": "settings"},
    "trustworthy/robustness/robustness.py": {"--run": "names the run", "--perturbations": "settings",
                                             "--noise_dir": "settings"},
    "trustworthy/sustainability/sustainability.py": {"--run": "names the run", "--input_seconds": "settings",
                                                     "--throughput_batch": "settings", "--repeats": "settings"},
}


@pytest.mark.parametrize("script", STAGE_FLAGS)
def test_every_flag_of_a_trust_script_says_how_its_results_stay_apart(script, capsys):
    with pytest.raises(SystemExit):
        load_script(script).main(["--help"])
    shared = {a.option_strings[0] for a in base_parser("")._actions if a.option_strings}
    added = {flag for flag in re.findall(r"^  (--\w+)", capsys.readouterr().out, re.MULTILINE)} - shared - {"--help"}
    assert added == set(STAGE_FLAGS[script])


def test_skeleton_skips_finished_folds_redoes_unfinished_and_overwrites(tmp_path, caplog):
    trust = STAGE["privacy"]
    run_stage(_stage(tmp_path, folds=[1, 2]), trust, lambda f: _result(trust, 50.0 + f))
    out_dir = trust.result_dir(tmp_path, _stage(tmp_path).run, Variant())
    unfinished = _result(trust, 0.0)
    del unfinished["best"]["linear_probe"]          # e.g. the probe trained, the linear probe not yet run
    write_json(out_dir / "fold_2.json", unfinished)
    calls = []
    with caplog.at_level(logging.INFO, logger="trust-ser"):
        results = run_stage(_stage(tmp_path, folds=[1, 2]), trust, lambda f: calls.append(f) or _result(trust, 60.0))
    assert calls == [2] and "fold 1: already evaluated" in caplog.text
    assert results["average"]["uar"] == pytest.approx((51.0 + 60.0) / 2)
    assert results["average"]["linear_probe"]["uar"] == pytest.approx((51.0 + 60.0) / 2)
    run_stage(_stage(tmp_path, folds=[1, 2], overwrite=True), trust, lambda f: calls.append(f) or _result(trust, 0.0))
    assert calls == [2, 1, 2]
    calls.clear()
    results = run_stage(_stage(tmp_path, folds=[3], aggregate_only=True), trust, calls.append)
    assert calls == [] and results["meta"]["folds_done"] == [1, 2]


def test_a_result_without_a_declared_key_is_refused_before_it_is_written(tmp_path):
    trust = STAGE["safety"]
    incomplete = {k: 1.0 for k in trust.result_keys[1:]}
    with pytest.raises(ValueError, match="lacks some of"):
        run_stage(_stage(tmp_path, folds=[1]), trust, lambda f: incomplete)
    assert not (trust.result_dir(tmp_path, _stage(tmp_path).run, Variant()) / "fold_1.json").exists()
    with pytest.raises(TrustSerError, match="no finished folds"):
        aggregate(_stage(tmp_path), trust)


def test_a_per_run_stage_runs_once_and_is_read_at_the_top_level(tmp_path):
    trust, calls = STAGE["gflops"], []
    run = _stage(tmp_path).run
    with pytest.raises(TrustSerError, match="nothing to aggregate"):
        run_stage(_stage(tmp_path, aggregate_only=True), trust, calls.append)
    result = run_stage(_stage(tmp_path, folds=[2, 3]), trust, lambda f: calls.append(f) or {"gflops": 4.5, "fold": f})
    assert calls == [2] and result["fold"] == 2 and result["flags"]["pretrain_model"] == "apc"
    run_stage(_stage(tmp_path), trust, calls.append)                           # there: not redone
    assert calls == [2]
    m = measure(trust, tmp_path, RunId.of(run))
    assert (m.value, m.std, m.folds) == (4.5, None, None)


def test_csv_columns_come_from_the_table():
    from utils.reporting.profile import RunProfile
    from utils.runs.stages import Measurement
    profile = RunProfile(RunId("iemocap", "m", "r"), "m", measurements={s.key: Measurement(1.0) for s in STAGES})
    header = table_rows([profile])[0]
    assert [h for h in header if h in {s.column for s in STAGES}] == [s.column for s in STAGES]


def test_has_key_tells_a_missing_key_from_a_none_value():
    assert has_key({"a": {"b": None}}, "a.b") and has_key({"a": None}, "a")
    assert not has_key({"a": {}}, "a.b") and not has_key({"a": 1}, "a.b") and not has_key({}, "a")


def test_extra_keys_are_required_of_new_folds_and_averaged_where_folds_have_them(tmp_path):
    """A key beyond the table's (a --group_by column): a fold without it is redone when it is asked for, and the
    average of it rests on the folds that have it (meta.value_folds)."""
    trust, extra = STAGE["fairness"], ["age.statistical_parity"]
    run_stage(_stage(tmp_path, folds=[1]), trust, lambda f: _result(trust, 0.1))
    calls = []

    def with_age(fold):
        calls.append(fold)
        return {**_result(trust, 0.2 * fold), "age": {"statistical_parity": 0.3 * fold}}

    results = run_stage(_stage(tmp_path, folds=[1, 2, 3]), trust, with_age, extra_keys=extra)
    assert calls == [1, 2, 3]
    assert results["average"]["age"]["statistical_parity"] == pytest.approx(0.3 * 2)
    run_stage(_stage(tmp_path, folds=[1, 2, 3]), trust, with_age, extra_keys=extra)      # all there now
    assert calls == [1, 2, 3]
    write_json(trust.result_dir(tmp_path, _stage(tmp_path).run, Variant()) / "fold_4.json", _result(trust, 0.5))
    results = aggregate(_stage(tmp_path), trust, extra_keys=extra)
    assert results["meta"]["folds_done"] == [1, 2, 3, 4]
    assert results["meta"]["value_folds"]["age"]["statistical_parity"] == [1, 2, 3]
    assert results["average"]["speaker"]["statistical_parity"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.5) / 4)
