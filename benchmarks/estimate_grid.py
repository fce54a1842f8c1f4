"""Extrapolate the paper's whole grid to one H100 from a measured benchmark_finetune.py --preset iemocap JSON.

The grid: 7 backbones x 6 corpora x their folds, 30 epochs, every evaluation; the original's loop against this
repository; `--corpus NAME` breaks one corpus down for WavLM base+ (feature pass, time per epoch, 30 epochs).

Assumptions (printed with the table): every backbone costs what WavLM base+ costs (APC, TERA, Whisper tiny/base
cost less; wav2vec2 base and Whisper small about the same); backbone time scales with audio seconds, head time
with utterances; corpus sizes and mean durations below are approximate (after the 4-class label maps); fold
structure from utils/data/corpora.py (k folds: one session tests, one is dev, the rest train; one split: 60/20/20).
The original scores dev and test after every epoch; here dev after every epoch and test once per fold (frozen
backbones, utils/training/finetune.py). The cache keeps a corpus whole when it fits `--cache_gb` + `--memory_gb`
(defaults 60 GiB of disk, no memory); otherwise, for the 2 backbones with a stored front end (WavLM, wav2vec 2.0),
it keeps the CNN encoder's output (bf16 on CUDA: 512 x 50 x 2 bytes per second of audio) of as many utterances
as fit, all of them first, then hidden states in the rest, training and dev utterances first (utils/features/cache.py
CachedFeatures; read every epoch, while test is read once), and for the other 5 (Whisper x 3, TERA, APC) hidden
states of as many as fit. Hidden states computed live cost the measured feature-pass rate per second of audio,
times (1 - --cnn_share) when they start from a stored front end. --cnn_share is the CNN encoder's share of a
WavLM base+ forward on the H100: not measured; 0.37 is its share of the FLOPs (give 0.25 and 0.5 for a range).
Evaluations: fairness and privacy read the cache; FGSM on each test fold at the measured rates; sustainability
(a few forward passes) is neglected.

  python benchmarks/estimate_grid.py benchmarks/results/h100_iemocap_wavlm.json
  python benchmarks/estimate_grid.py benchmarks/results/h100_iemocap_wavlm.json --corpus msp-podcast --memory_gb 40
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.corpora import get_corpus  # noqa: E402

BACKBONES = 7
FRONT_END_BACKBONES = 2    # wavlm, wav2vec2_0: deterministic CNN front ends, stored as the cache's second tier
EPOCHS = 30
FRONT_END_BYTES_PER_S = 512 * 50 * 2   # WavLM base+'s CNN encoder output: 512 channels, 50 frames/s, bf16
# corpus: (utterances after the label map, mean seconds after cropping at 6 s) -- approximate
CORPORA = {"iemocap": (5531, 3.8), "crema_d": (4900, 2.5), "msp-improv": (7800, 3.9), "msp-podcast": (150000, 5.0),
           "meld": (11350, 3.0), "ravdess": (1440, 3.7)}


def live_share(hidden_bytes: float, front_bytes: float, budget: float, cnn_share: float | None) -> float:
    """Share of the full backbone cost of some utterances that runs live when they get `budget` bytes: front ends
    first, then hidden states (cnn_share None: no front-end tier)."""
    if budget >= hidden_bytes:
        return 0.0
    if cnn_share is None:
        return 1 - budget / hidden_bytes
    if budget < front_bytes:
        with_front = budget / front_bytes
        return with_front * (1 - cnn_share) + (1 - with_front)
    with_hidden = (budget - front_bytes) / (hidden_bytes - front_bytes)
    return (1 - with_hidden) * (1 - cnn_share)


def corpus_costs(name: str, m: dict, budget_gb: float, cnn_share: float | None) -> dict:
    """Seconds for one backbone on one corpus, all folds and evaluations: the original loop, and ours by part."""
    n, seconds = CORPORA[name]
    folds = get_corpus(name).num_folds
    runs, train_share, dev_share = (folds, (folds - 2) / folds, 1 / folds) if folds else (1, 0.6, 0.2)
    scale = seconds / m["seconds_per_utt"]       # backbone cost relative to the measured corpus
    train, evaluated, test = n * train_share, n * (1 - train_share), n * (1 - train_share - dev_share)
    original = runs * EPOCHS * (train / 64 * m["orig_batch"] * scale + evaluated * m["orig_eval"] * scale)
    audio = n * seconds
    full_pass = m["pass_per_audio_s"]
    hidden, front, budget = audio * m["bytes_per_audio_s"], audio * FRONT_END_BYTES_PER_S, budget_gb * 2**30
    read = train_share + dev_share               # read every epoch; test once per fold
    front_first = cnn_share is not None and budget >= front
    budget_read = budget - (1 - read) * front if front_first else budget   # every front end is kept first
    epoch_live = live_share(read * hidden, read * front, budget_read, cnn_share)
    test_budget = max(budget_read - read * hidden, 0.0) + ((1 - read) * front if front_first else 0.0)
    test_live = live_share((1 - read) * hidden, (1 - read) * front, test_budget, cnn_share)
    return {"original": original, "original fgsm": runs * test * m["fgsm_orig"] * scale,
            "feature pass": audio * full_pass,
            "live per epoch": runs * epoch_live * read * audio * full_pass,
            "head per epoch": runs * (train / 64 * m["ours_batch"] + evaluated * m["ours_eval"]),
            "test once": runs * test_live * (1 - read) * audio * full_pass,
            "fgsm": runs * test * m["fgsm_ours"] * scale,
            "privacy": (train / 64 * m["ours_batch"] + evaluated * m["ours_eval"]) * 20}   # one fold, 20 epochs


def ours_total(c: dict) -> float:
    return (c["feature pass"] + EPOCHS * (c["live per epoch"] + c["head per epoch"]) + c["test once"] + c["fgsm"]
            + c["privacy"])


def measured(path: Path) -> dict:
    r = json.loads(path.read_text())
    cfg, orig, ours, fgsm = r["config"], r["per_epoch"], r["ours"], r["fgsm"]
    audio_s = cfg["audio_hours"] * 3600
    return {"seconds_per_utt": cfg["mean_seconds_cropped"], "orig_batch": orig["seconds_per_training_batch"],
            "orig_eval": orig["seconds_per_evaluated_utterance"], "ours_batch": ours["seconds_per_training_batch"],
            "ours_eval": ours["seconds_per_evaluated_utterance"], "pass_per_audio_s": ours["stages"]["feature pass"] / audio_s,
            "bytes_per_audio_s": ours["cache"]["bytes"] / audio_s,
            "fgsm_orig": fgsm["batch_1"]["seconds"] / fgsm["test_utterances"],
            "fgsm_ours": fgsm["batched"]["seconds"] / fgsm["test_utterances"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path, help="benchmark_finetune.py --preset iemocap --json output (one H100)")
    p.add_argument("--cache_gb", type=float, default=60.0, help="disk cache budget (GiB)")
    p.add_argument("--memory_gb", type=float, default=0.0, help="GPU memory budget for features (GiB)")
    p.add_argument("--cnn_share", type=float, default=0.37,
                   help="the CNN encoder's share of a backbone forward's time (not measured; 0.37: its FLOP share)")
    p.add_argument("--corpus", choices=sorted(CORPORA), help="one corpus, WavLM base+ only, by part")
    args = p.parse_args()
    m, budget = measured(args.json), args.cache_gb + args.memory_gb
    if args.corpus:
        return print_corpus(args.corpus, corpus_costs(args.corpus, m, budget, args.cnn_share))
    print(f"| corpus (utterances, mean s) | folds | original loop, {BACKBONES} backbones | ours, {BACKBONES} backbones "
          f"(cache {budget:g} GiB, CNN share {args.cnn_share:g}) | ratio |")
    print("|---|---:|---:|---:|---:|")
    total_o = total_u = 0.0
    for name, (n, seconds) in CORPORA.items():
        tiered, plain = (corpus_costs(name, m, budget, share) for share in (args.cnn_share, None))
        o = BACKBONES * (plain["original"] + plain["original fgsm"])
        u = FRONT_END_BACKBONES * ours_total(tiered) + (BACKBONES - FRONT_END_BACKBONES) * ours_total(plain)
        total_o, total_u = total_o + o, total_u + u
        print(f"| {name} ({n}, {seconds:g} s) | {get_corpus(name).num_folds or 1} | {o / 3600:.1f} h | "
              f"{u / 3600:.2f} h | {o / u:.0f}x |")
    print(f"| **grid** | | **{total_o / 3600:.0f} h ({total_o / 86400:.1f} days)** | **{total_u / 3600:.1f} h** | "
          f"**{total_o / total_u:.0f}x** |")


def print_corpus(name: str, c: dict) -> None:
    """Fine-tuning alone (no trust evaluations): the feature pass, time per epoch, 30 epochs."""
    train = c["feature pass"] + EPOCHS * (c["live per epoch"] + c["head per epoch"]) + c["test once"]
    print(f"{name}, WavLM base+, {EPOCHS} epochs: feature pass {c['feature pass']:.0f} s; per epoch "
          f"{c['live per epoch'] + c['head per epoch']:.0f} s ({c['head per epoch']:.0f} s head); test once "
          f"{c['test once']:.0f} s; fine-tuning {train:.0f} s = {train / 3600:.2f} h "
          f"(the original loop: {c['original'] / 3600:.1f} h, {c['original'] / train:.1f}x)")


if __name__ == "__main__":
    main()
