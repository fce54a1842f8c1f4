"""Trust profiles of finished runs: every stage's measurement per run, and the tables that show them."""
import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from utils.core.errors import TrustSerError
from utils.core.io import read_json, saved_number
from utils.data.corpora import get_corpus
from utils.data.layout import splits_fingerprint
from utils.runs.paths import RunId, finetune_folder, model_and_run
from utils.runs.stages import (STAGE, STAGES, Measurement, Variant, backbone_build, dig, for_run, measure,
                              recorded_flags)

STALE_SPLITS = "trained on splits remade since"

PRETTY_MODELS = {"wav2vec2_0": "Wav2vec 2.0", "wavlm": "WavLM", "apc": "APC", "tera": "TERA",
                 "whisper_tiny": "Whisper Tiny", "whisper_base": "Whisper Base", "whisper_small": "Whisper Small"}


@dataclass
class RunProfile:
    run: RunId
    label: str
    build: list = field(default_factory=list)           # "tiny", "random init": not the published backbone
    measurements: dict = field(default_factory=dict)    # stage key -> Measurement
    variant: Variant = Variant()                        # what was read for this run ("auto" resolved)
    original_probe: Measurement | None = None           # the original's privacy probe, where the axis shows another
    stale_splits: bool = False                          # its run.json's splits are not those train_split/ holds now

    @property
    def random_init(self) -> bool:
        return "random init" in self.build

    @property
    def name(self) -> str:
        """The label with what ran: "WavLM (tiny, random init)"."""
        return self.label + (f" ({', '.join(self.build)})" if self.build else "")

    def value(self, key: str) -> float | None:
        return self.measurements[key].value

    @property
    def folds(self) -> int | None:
        """Folds the emotion UAR averages: the run's fold count."""
        return self.measurements["uar"].folds

    def notes(self, keys) -> list[str]:
        """Why the run has no value on these axes (stage keys), where it has none."""
        return [self.measurements[k].note for k in keys if self.measurements[k].note]

    def missing_titles(self, keys) -> list[str]:
        """Titles of the axes (stage keys) this run has no value for."""
        return [STAGE[k].title for k in keys if self.value(k) is None]


def load_profile(project_dir: Path, run: RunId, label: str, variant: Variant,
                 splits_now: dict | None = None) -> RunProfile:
    """The run's measurements; `splits_now`: the fingerprints of the present splits that other runs' profiles
    read already (load_profiles shares one)."""
    flags = recorded_flags(project_dir, run)
    variant = for_run(variant, run, flags)
    original = None if variant.privacy_probe == "original" else \
        measure(STAGE["privacy"], project_dir, run, dataclasses.replace(variant, privacy_probe="original"), flags)
    return RunProfile(run, label, backbone_build(run, flags), {s.key: measure(s, project_dir, run, variant, flags)
                                                               for s in STAGES}, variant, original,
                      trained_on_other_splits(project_dir, run, {} if splits_now is None else splits_now))


def trained_on_other_splits(project_dir: Path, run: RunId, splits_now: dict) -> bool:
    """Whether the run's run.json records splits that train_split/ no longer holds (the corpus split again since):
    its numbers then do not compare with runs on the present splits."""
    record, results = finetune_folder(project_dir, run).record, STAGE["uar"].result_path(project_dir, run)
    if not record.is_file() or not results.is_file():
        return False
    try:
        get_corpus(run.dataset, project_dir)    # a manifest corpus: its description names its split files
    except TrustSerError:
        return False                            # results without their corpus: nothing to compare with
    meta = dig(read_json(results), ["meta"]) or {}
    folds = tuple(sorted((meta.get("folds_done") or []) + (meta.get("folds_missing") or [])))
    if (run.dataset, folds) not in splits_now:
        splits_now[run.dataset, folds] = splits_fingerprint(project_dir, run.dataset, list(folds))
    recorded, now = read_json(record).get("splits"), splits_now[run.dataset, folds]
    return None not in (recorded, now) and recorded != now


def _parse_run_spec(spec: str) -> tuple[str, str, str | None]:
    target, _, label = spec.partition("=")
    if (parsed := model_and_run(target)) is None:
        raise TrustSerError(f"--runs entry '{spec}' must look like MODEL/RUN_NAME or MODEL/RUN_NAME=LABEL")
    return *parsed, label or None


def find_runs(project_dir: Path, dataset: str, specs: list[str] | None) -> list[tuple[RunId, str | None]]:
    """(run, label or None) for each --runs entry, else for every finished finetune run of the dataset."""
    if specs:
        return [(RunId(dataset, model, name), label) for model, name, label in map(_parse_run_spec, specs)]
    pattern = STAGE["uar"].result_path(project_dir, RunId(dataset, "*", "*"))
    found = sorted(Path(project_dir).glob(str(pattern.relative_to(project_dir))))
    if not found:
        raise TrustSerError(f"no runs found: nothing matches {pattern} (or pass --runs)")
    return [(RunId(dataset, p.parent.parent.name, p.parent.name), None) for p in found]


def default_labels(runs: list[tuple[RunId, str | None]]) -> list[str]:
    """The given label, else the model's name, plus the run name when a model has several runs."""
    per_model = Counter(run.pretrain_model for run, _ in runs)
    labels = []
    for run, label in runs:
        pretty = PRETTY_MODELS.get(run.pretrain_model, run.pretrain_model)
        labels.append(label or (pretty if per_model[run.pretrain_model] == 1 else f"{pretty} ({run.name})"))
    return labels


def load_profiles(project_dir: Path, dataset: str, specs: list[str] | None, variant: Variant) -> list[RunProfile]:
    runs = find_runs(project_dir, dataset, specs)
    splits_now: dict = {}
    profiles = [load_profile(project_dir, run, label, variant, splits_now)
                for (run, _), label in zip(runs, default_labels(runs))]
    for p in profiles:
        if all(m.value is None for m in p.measurements.values()):
            raise TrustSerError(f"no results at all for {p.run.pretrain_model}/{p.run.name} under {project_dir}")
    return profiles


def fmt(value: float) -> str:
    """3 significant digits, no trailing zeros: 14.3, 66.4, 100."""
    return f"{float(f'{value:.3g}'):g}"


def shown_variant(profiles: list[RunProfile], variant: Variant) -> Variant:
    """What a chart or table of these runs shows: the per-run choices (privacy probe, fairness group) resolved
    where every run resolved them alike."""
    for name in ("privacy_probe", "fairness_group"):
        values = {getattr(p.variant, name) for p in profiles}
        if len(values) == 1:
            variant = dataclasses.replace(variant, **{name: values.pop()})
    return variant


def axis_label(key: str, variant: Variant) -> str:
    return f"{STAGE[key].title}\n{STAGE[key].describe(variant)}"


def folds_text(n: int) -> str:
    """"1 fold", "5 folds"."""
    return f"{n} fold{'s' if n != 1 else ''}"


def fold_count(m: Measurement, folds_of_run: int | None) -> str:
    """"1 of 5 folds" where a value rests on fewer (or other) folds than the run; "" where on all of them."""
    if m.folds is None or m.folds == folds_of_run:
        return ""
    return f"{m.folds} of {folds_of_run} folds" if folds_of_run else folds_text(m.folds)


def spread(m: Measurement) -> float | None:
    """The spread over folds; None for a single fold (a std of 0 there would read as "no variation")."""
    return None if m.folds == 1 else m.std


def cell(m: Measurement, folds_of_run: int | None = None) -> str:
    """"66.43 ± 1.20", with "(k of n folds)" where the value rests on fewer folds than the run and a flag for a
    collapsed probe."""
    if m.value is None:
        return "n/a"
    text = f"{m.value:.2f}" if spread(m) is None else f"{m.value:.2f} ± {spread(m):.2f}"
    count = fold_count(m, folds_of_run)
    return text + (f" ({count})" if count else "") + (" (probe collapsed)" if m.collapsed else "")


def _csv_cell(value) -> str:
    """None as an empty cell, a float as results save it."""
    if value is None:
        return ""
    return saved_number(value) if isinstance(value, float) else str(value)


def table_rows(profiles: list[RunProfile]) -> list[list]:
    """trust_profile.csv: a header, then one row per run."""
    header = ["label", "pretrain_model", "run_name", "tiny", "random_init", "folds"]
    for s in STAGES:
        header += [s.column, s.column + "_std", s.column + "_folds"]
    header += ["privacy_probe", "privacy_collapsed", "privacy_original_probe_uar_pct",
               "privacy_original_probe_uar_pct_folds", "privacy_original_probe_collapsed"]
    rows = [header]
    for p in profiles:
        row = [p.label, p.run.pretrain_model, p.run.name, "tiny" in p.build, p.random_init, p.folds]
        for s in STAGES:
            m = p.measurements[s.key]
            row += [m.value, spread(m), None if m.value is None else m.folds]
        original = p.original_probe or p.measurements["privacy"]
        row += [p.variant.privacy_probe, p.measurements["privacy"].collapsed, original.value,
                None if original.value is None else original.folds, original.collapsed]
        rows.append([_csv_cell(v) for v in row])
    return rows


def markdown_cell(text: str) -> str:
    """Text in a Markdown table cell: its pipes escaped, so that they do not split the cell."""
    return text.replace("|", "\\|")


def table_markdown(profiles: list[RunProfile], ranges: dict, variant: Variant) -> str:
    """The runs' values on the axes shown (the keys of ranges, in their order)."""
    variant = shown_variant(profiles, variant)
    shown = [STAGE[k] for k in ranges]
    titles = [axis_label(s.key, variant).replace("\n", ": ", 1).replace("\n", " ") for s in shown]
    lines = ["| Model | Run | Folds | " + " | ".join(titles) + " |", "|" + "---|" * (len(shown) + 3)]
    for p in profiles:
        cells = [cell(p.measurements[s.key], p.folds) for s in shown]
        lines.append(f"| {markdown_cell(p.name)} | {p.run.name} | {p.folds or 'n/a'} | " + " | ".join(cells) + " |")
    direction = ", ".join(f"{s.title} {'higher' if s.higher_is_better else 'lower'} is better" for s in shown)
    chart = "; ".join(f"{s.title} " + ("n/a" if ranges[s.key] is None else
                                       f"{fmt(ranges[s.key][0])} to {fmt(ranges[s.key][1])}") for s in shown)
    return (("\n".join(lines) + f"\n\n{direction}. A value resting on fewer folds than its run says on how many "
             f"(\"k of n folds\"); a single fold has no spread.\n\nRanges of the comparison chart: {chart}. Each "
             f"run's own chart runs fairness to 100 and GFLOPs to about twice the run's value (no natural scale), so "
             f"that a run is not drawn at the centre only for being the largest.\n"))
