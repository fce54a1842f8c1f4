"""Feature sources: cached == live, batched == batch-of-one, cached last-layer input == full forward, cache keys.

Tiny random-init backbones on 0.5-2 s clips (CPU, seconds); one test runs the finetune script twice."""
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model.backbones import build_backbone  # noqa: E402
from model.heads import CNNSelfAttention  # noqa: E402
from synthetic_project import load_script  # noqa: E402
from utils.core.io import write_wav  # noqa: E402
from utils.runs.identity import RunConfig  # noqa: E402
from utils.data.utterances import Utterance, pad_features  # noqa: E402
from utils.features.budget import feature_budgets  # noqa: E402
from utils.features import cache as cache_module  # noqa: E402
from utils.features.cache import CachedFeatures, LastLayerFeatures  # noqa: E402
from utils.features.source import AudioBank, LiveFeatures  # noqa: E402
from utils.training.pipeline import make_source  # noqa: E402
from utils.features.shards import ENTRY_BYTES, ShardStore  # noqa: E402
from utils.data.synthetic import EMOTIONS, make_corpus, make_speaker, synthesize  # noqa: E402
from utils.training.loop import evaluate, evaluate_heads, set_seed, train_epoch  # noqa: E402

pytestmark = [  # library noise: s3prl's unused MFCC transform, HF WavLM's mixed mask types
    pytest.mark.filterwarnings("ignore:At least one mel filterbank has all zero values"),
    pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask"),
]
CPU = torch.device("cpu")
SECONDS = [0.5, 1.9, 1.0, 1.4, 0.7, 1.2, 1.65, 0.85]   # clearly different lengths: padding in every batch
FP16_EPS = 2.0 ** -11                                 # relative rounding of the stored fp16 tensors
_backbones: dict = {}


@pytest.fixture(scope="module")
def utts(tmp_path_factory) -> list[Utterance]:
    """Synthetic speech (two speakers, the four emotions) cut or looped to the lengths above; label = emotion."""
    folder = tmp_path_factory.mktemp("clips")
    out = []
    for i, seconds in enumerate(SECONDS):
        speaker = make_speaker(1 + i % 2, seed=0)
        wav = synthesize(speaker, EMOTIONS[i % 4], k=i, seed=0)
        path = folder / f"u{i}.wav"
        write_wav(path, np.resize(wav, int(seconds * 16000)), 16000)
        out.append(Utterance(f"u{i}", speaker.name, speaker.gender, str(path), i % 4))
    return out


def backbone(name: str, finetune: str = "frozen"):
    if (name, finetune) not in _backbones:
        _backbones[name, finetune] = build_backbone(name, random_init=True, tiny=True, finetune=finetune)
    return _backbones[name, finetune]


def head_for(bb, seed: int = 3) -> CNNSelfAttention:
    torch.manual_seed(seed)
    return CNNSelfAttention(bb.hidden_dim, bb.num_layers, 4, hidden_dim=16, conv_layers=2, pooling_method="att")


def cached(bb, cache_root: Path | None, batch_size: int = 8, kind=CachedFeatures):
    return kind(bb, AudioBank(2, skip_bad=False), CPU, batch_size, cache_root, memory_budget_bytes=1 << 30)


def live(bb, round_like_cache: bool):
    return LiveFeatures(bb, AudioBank(2, skip_bad=False), CPU, round_like_cache=round_like_cache)

# -- Part A: --finetune unfrozen_last_layer from cached inputs of the last layer


@pytest.mark.parametrize("kind", [CachedFeatures, LastLayerFeatures])
def test_the_front_end_tier_shares_the_caches_disk_and_memory_budgets(kind, tmp_path):
    source = kind(backbone("wavlm"), AudioBank(2, skip_bad=False), CPU, 8, tmp_path, memory_budget_bytes=12345,
                  disk_budget_bytes=67890)
    fronts = source.front_end_features()
    assert fronts.store.disk.budget == 67890 and fronts.store.pool is source.store.pool
    assert fronts.store.pool.budget == 12345


@pytest.mark.parametrize("name", ["wavlm", "whisper_tiny", "tera"])
def test_last_layer_source_equals_the_full_forward_and_trains_the_last_layer(name, utts, tmp_path):
    bb = backbone(name, "unfrozen_last_layer")
    source = cached(bb, tmp_path, kind=LastLayerFeatures)
    assert source.prepare(utts) == utts and source.stats["computed"] == len(utts)
    bb.eval()
    expected, expected_mask = live(bb, round_like_cache=False).batch(utts)
    hidden, mask = source.batch(utts)
    assert hidden.shape == expected.shape == (bb.num_layers, len(utts), mask.shape[1], bb.hidden_dim)
    assert torch.equal(mask, expected_mask) and not mask.all()
    scale = expected.abs().max().item()
    lower_err = (hidden[:-1] - expected[:-1]).abs().max().item()
    last_err = (hidden[-1] - expected[-1]).abs().max().item()
    assert lower_err <= FP16_EPS * scale          # only the fp16 rounding of the stored lower states
    assert last_err <= 4 * FP16_EPS * scale       # the last layer run on fp16-rounded inputs
    assert hidden[:, ~mask].abs().max() == 0       # padded frames are zero, as forward() gives them

    got, expected = (last_layer_gradients(bb, s, utts) for s in (source, live(bb, round_like_cache=False)))
    assert 0 < (got - expected).norm() <= 0.01 * expected.norm()


def last_layer_gradients(bb, source, utts) -> torch.Tensor:
    """Gradient of a loss on all hidden states, flattened; the last layer's parameters, and only they, get one."""
    hidden, mask = source.batch(utts, grad=True)
    hidden[:, mask].pow(2).mean().backward()
    grads = {n: p.grad.flatten() for n, p in bb.named_parameters() if p.grad is not None}
    assert set(grads) == {n for n, p in bb.named_parameters() if p.requires_grad} != set()
    assert all(g.abs().max() > 0 for n, g in grads.items() if n.endswith(".weight"))
    bb.zero_grad(set_to_none=True)
    return torch.cat(list(grads.values()))


def test_one_epoch_of_last_layer_finetuning_matches_the_live_backbone(utts, tmp_path):
    """Same seed, same batches: cached last-layer input vs the whole backbone every batch."""
    bb = backbone("wavlm", "unfrozen_last_layer")
    initial = {k: v.clone() for k, v in bb.state_dict().items()}
    store = cached(bb, tmp_path, kind=LastLayerFeatures)
    store.prepare(utts)
    runs = {}
    for label, source in (("cached", store), ("live", live(bb, round_like_cache=False))):
        bb.load_state_dict(initial)
        set_seed(8)
        head = head_for(bb)
        params = list(head.parameters()) + [p for p in bb.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=5e-3)
        losses = [train_epoch(head, bb, source, utts, nn.NLLLoss(), optimizer, 2, torch.Generator().manual_seed(8),
                              4)["loss"] for _ in range(2)]
        trained = {n: p.detach().clone() for n, p in bb.named_parameters() if p.requires_grad}
        runs[label] = losses, evaluate(head, bb, source, utts, 8, 4).probabilities, trained
    bb.load_state_dict(initial)
    (loss_c, prob_c, trained), (loss_l, prob_l, _) = runs["cached"], runs["live"]
    print(f"\nlast-layer finetuning, cached vs live: losses {loss_c} vs {loss_l}, "
          f"max probability difference {np.abs(prob_c - prob_l).max():.2e}")
    assert np.allclose(loss_c, loss_l, rtol=1e-4) and loss_c[1] != loss_c[0]
    assert np.abs(prob_c - prob_l).max() < 1e-4
    # the weights themselves are not compared: Adam's first steps are about lr * sign(gradient), so weights
    # with near-zero gradients move by +-lr on float noise
    assert trained and all(not torch.equal(p, initial[n]) for n, p in trained.items() if n.endswith(".weight"))


def test_make_source_picks_the_source_for_each_mode(tmp_path):
    def source_for(finetune: str, no_cache: bool = False, grad: bool | None = None):
        run = RunConfig(audio_duration=2, finetune=finetune, no_cache=no_cache, eval_batch_size=4)
        grad = finetune != "frozen" if grad is None else grad
        return make_source(run, backbone("wavlm", finetune), CPU, str(tmp_path), grad_backbone=grad)

    assert type(source_for("frozen")) is CachedFeatures
    assert type(source_for("unfrozen_last_layer")) is LastLayerFeatures
    assert type(source_for("unfrozen")) is LiveFeatures and not source_for("unfrozen").round_like_cache
    assert type(source_for("unfrozen_last_layer", grad=False)) is CachedFeatures   # probing a fine-tuned backbone
    assert source_for("frozen", no_cache=True).round_like_cache
    uncached = source_for("unfrozen_last_layer", no_cache=True)     # the cache's values, nothing kept
    assert type(uncached) is LastLayerFeatures and uncached.cache_root is None and uncached.cache_report() is None


def test_no_cache_with_a_trainable_last_layer_gives_the_cached_inputs(utts, tmp_path):
    """--no_cache --finetune unfrozen_last_layer: each batch's lower hidden states and last-layer input are the
    cache's (fp16-rounded), recomputed, so the last layer trains and scores on the same values either way."""
    batches = []
    for no_cache in (False, True):
        run = RunConfig(audio_duration=2, finetune="unfrozen_last_layer", no_cache=no_cache, eval_batch_size=4)
        bb = backbone("wavlm", "unfrozen_last_layer")
        source = make_source(run, bb, CPU, str(tmp_path), grad_backbone=True)
        bb.eval()
        batches.append(source.batch(source.prepare(utts)))
    assert source.stats["live"] == len(utts)                       # the uncached source kept nothing
    (cached, cached_mask), (uncached, uncached_mask) = batches
    assert torch.equal(cached_mask, uncached_mask) and torch.equal(cached, uncached)
    assert torch.equal(uncached[:-1], uncached[:-1].half().float())      # the lower states: rounded as stored

# -- Part B: equivalences the feature cache must keep


@pytest.fixture(scope="module")
def trained_head(utts) -> CNNSelfAttention:
    """A head fitted to the clips (on cached tiny-WavLM features), so its predictions vary and are confident."""
    bb = backbone("wavlm")
    source = cached(bb, None)
    source.prepare(utts)
    head = head_for(bb)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for epoch in range(30):
        train_epoch(head, bb, source, utts, nn.NLLLoss(), optimizer, 4, torch.Generator().manual_seed(epoch), 4)
    return head


@pytest.mark.parametrize("kind", ["live", "cached"])
def test_batched_evaluation_equals_batch_of_one(kind, utts, trained_head, tmp_path):
    bb = backbone("wavlm")
    # fp32 live path: padding and masks must not matter beyond float noise (fp16 storage is tested elsewhere)
    source = live(bb, round_like_cache=False) if kind == "live" else cached(bb, tmp_path, batch_size=3)
    utts = source.prepare(utts)
    head = trained_head
    one = evaluate(head, bb, source, utts, 1, 4)
    batched = evaluate(head, bb, source, utts, 8, 4)
    diff = np.abs(one.probabilities - batched.probabilities).max()
    print(f"\n{kind}: batch 8 vs batch 1, max probability difference {diff:.2e}")
    assert diff < 1e-5
    assert np.array_equal(one.predictions, batched.predictions)
    assert abs(one.loss - batched.loss) < 1e-5
    assert len(set(one.predictions)) > 2 and one.probabilities.max(1).min() > 0.5   # varied, confident


def test_several_heads_share_one_feature_pass_and_score_as_alone(utts, trained_head):
    """What scores every epoch's head on the test split after training (a frozen backbone)."""
    bb = backbone("wavlm")
    source = live(bb, round_like_cache=True)
    utts = source.prepare(utts)
    fetched, fetch = [], source.fetch
    source.fetch = lambda batch: fetched.append(len(batch)) or fetch(batch)
    other = head_for(bb)
    together = evaluate_heads([trained_head, other], bb, source, utts, 3, 4)
    assert fetched == [3, 3, 2]                    # one pass over the features for both heads
    for head, result in zip([trained_head, other], together):
        alone = evaluate(head, bb, source, utts, 3, 4)
        assert np.array_equal(result.probabilities, alone.probabilities) and result.scores == alone.scores
    assert not np.array_equal(together[0].probabilities, together[1].probabilities)


def test_uncached_frozen_features_are_rounded_like_the_cache(utts, tmp_path):
    """--no_cache (frozen) gives the cache's fp16 values whatever the batch: only rare rounding flips (the padded
    width of a batch changes the CNN's fp32 results in the last bits), each within one fp16 ulp of the value
    or 1e-6 of the tensor's scale."""
    bb = backbone("wavlm")
    store, uncached = cached(bb, tmp_path, batch_size=3), live(bb, round_like_cache=True)
    store.prepare(utts)
    for order in ([0, 1, 2, 3, 4, 5, 6, 7], [7, 2, 5], [3], [6, 0, 4, 1]):
        batch = [utts[i] for i in order]
        (expected, expected_mask), (hidden, mask) = store.batch(batch), uncached.batch(batch)
        assert torch.equal(mask, expected_mask)
        differ = hidden != expected
        ulp = torch.maximum(expected.abs().clamp_min(2.0 ** -14) * 2.0 ** -10, 1e-6 * expected.abs().max())
        assert differ.float().mean() <= 5e-3
        assert ((hidden - expected).abs()[differ] <= ulp[differ]).all()
    assert not live(bb, round_like_cache=False).batch(utts)[0].equal(store.batch(utts)[0])


def test_changed_audio_is_recomputed_and_keys_follow_weights_and_kind(utts, tmp_path):
    bb = backbone("wavlm")
    first = cached(bb, tmp_path)
    first.prepare(utts)
    assert first.stats == {"computed": len(utts), "from_disk": 0, "from_memory": 0, "live": 0, "live_from_front_end": 0}
    before = first.get(utts[2]).clone()
    first.prepare(utts)
    assert first.stats["from_memory"] == len(utts) and first.stats["computed"] == len(utts)

    rng = np.random.default_rng(7)
    write_wav(utts[2].path, (0.2 * rng.standard_normal(int(1.1 * 16000))).astype(np.float32), 16000)   # new content
    touched = Path(utts[5].path)
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))       # only mtime
    second = cached(bb, tmp_path)
    second.prepare(utts)
    assert second.stats == {"computed": 2, "from_disk": len(utts) - 2, "from_memory": 0, "live": 0,
                            "live_from_front_end": 0}
    after = second.get(utts[2])
    assert after.shape[1] != before.shape[1]
    assert torch.equal(second.get(utts[0]), first.get(utts[0]))
    assert second.disk_bytes() > 0

    other = build_backbone("wavlm", random_init=True, tiny=True)
    other.weights_id += "+finetuned:x"
    keys = {cached(b, tmp_path, kind=k).key(utts[0].path)
            for b, k in ((bb, CachedFeatures), (other, CachedFeatures), (bb, LastLayerFeatures))}
    assert len(keys) == 3
    assert cached(bb, tmp_path).key(utts[0].path) == first.key(utts[0].path)


def prepared_project(root: Path) -> Path:
    """Synthetic corpus (5 speakers, 40 clips) -> splits -> preprocessed audio, by the real scripts' main()."""
    make_corpus(root / "corpus", n_speakers=5, utts_per_emotion=2)
    config = root / "config.yml"
    config.write_text(f"data_dir:\n  demo: {root / 'corpus'}\nproject_dir: {root / 'prepared'}\n")
    scripts = (("train_split_gen/demo.py", []), ("preprocess_audio/preprocess_audio.py", ["--dataset", "demo"]))
    for script, flags in scripts:
        with mock.patch.object(sys, "argv", [script, "--config", str(config), *flags]):
            load_script(script).main()
    return root / "prepared"


@pytest.mark.slow
def test_cached_and_uncached_finetune_runs_give_the_same_predictions(tmp_path):
    prepared = prepared_project(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    flags = ["--dataset", "demo", "--random_init", "--tiny", "--pretrain_model", "wavlm", "--folds", "1",
             "--num_epochs", "2", "--batch_size", "8", "--eval_batch_size", "8", "--device", "cpu",
             "--audio_duration", "2", "--hidden_size", "16", "--conv_layers", "2", "--learning_rate", "0.005"]
    runs = {}
    for mode, extra in (("cached", []), ("uncached", ["--no_cache"])):
        project = tmp_path / mode
        project.mkdir()
        for part in ("train_split", "audio"):   # the same splits and audio, separate outputs and cache
            (project / part).symlink_to(prepared / part)
        config = tmp_path / f"{mode}.yml"
        config.write_text(f"data_dir:\n  demo: {tmp_path / 'corpus'}\nproject_dir: {project}\n")
        command = [sys.executable, str(REPO / "experiment" / "finetune_single_thread.py"), "--config", str(config),
                   *flags, *extra]
        runs[mode] = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    for mode, proc in runs.items():   # both at once: two cores
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{mode} run failed:\n{output[-3000:]}"
    assert (tmp_path / "cached" / "cache").is_dir() and not (tmp_path / "uncached" / "cache").exists()

    run_dirs = {mode: next((tmp_path / mode / "finetune").rglob("fold_1.json")).parent for mode in runs}
    cached_pred, uncached_pred = (pd.read_csv(run_dirs[m] / "fold_1_test_predictions.csv") for m in runs)
    probs = [c for c in cached_pred.columns if c.startswith("prob_")]
    diff = np.abs(cached_pred[probs].to_numpy() - uncached_pred[probs].to_numpy()).max()
    histories = [json.loads((run_dirs[m] / "fold_1.json").read_text()) for m in runs]
    loss_diff = max(abs(histories[0][e][s]["loss"] - histories[1][e][s]["loss"])
                    for e in ("0", "1") for s in ("train", "dev", "test"))
    print(f"\ncached vs --no_cache: max probability difference {diff:.2e}, max loss difference {loss_diff:.2e}")
    assert list(cached_pred["key"]) == list(uncached_pred["key"]) and len(cached_pred) == 8
    assert list(cached_pred["prediction"]) == list(uncached_pred["prediction"])
    assert diff <= 1e-4 and loss_diff <= 1e-5
    assert histories[0]["1"]["train"]["loss"] != histories[0]["0"]["train"]["loss"]   # it did train

# -- Part C: the bounded, sharded cache


def trained_predictions(source, utts):
    """Three epochs of head training and an evaluation, all through `source` (read-ahead thread included)."""
    bb = source.backbone
    head = head_for(bb)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for epoch in range(3):
        train_epoch(head, bb, source, utts, nn.NLLLoss(), optimizer, 4, torch.Generator().manual_seed(epoch), 4)
    return evaluate(head, bb, source, utts, 3, 4)


def fp16_close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    """Equal up to the fp16 rounding flips of another batch's padding."""
    return bool((got.float() - expected.float()).abs().max() <= 4 * FP16_EPS * expected.float().abs().max())


def bounded(bb, cache_root: Path, disk_budget: int, memory_budget: int = 0):
    return CachedFeatures(bb, AudioBank(2, skip_bad=False), CPU, 8, cache_root, memory_budget, disk_budget)


@pytest.mark.parametrize("name, fraction", [("wavlm", 0.0), ("wavlm", 0.2), ("wavlm", 0.6), ("wavlm", 1.0),
                                            ("whisper_tiny", 0.2)])
def test_a_bounded_cache_stays_within_budget_and_predicts_as_the_unbounded_one(name, fraction, utts, tmp_path):
    """WavLM keeps what does not fit as hidden states as CNN encoder outputs (the front-end tier; the tiny
    model's are half the size of its hidden states), Whisper (no deterministic front end) runs it all live."""
    bb = backbone(name)
    full = cached(bb, tmp_path / "full")
    full.prepare(utts)
    expected = trained_predictions(full, utts)
    budget = int(fraction * full.disk_bytes())
    if fraction == 1:       # the full cache as the split counts it: ENTRY_BYTES for each index entry (~100 used)
        budget += len(utts) * ENTRY_BYTES
    source = bounded(bb, tmp_path / "bounded", budget)      # nothing in memory: disk or live
    assert source.prepare(utts) == utts
    got = trained_predictions(source, utts)
    hidden = len(source.store.disk.entries)
    fronts = len(source.front_ends.store.disk.entries) if source.front_ends else 0
    print(f"\n{name}, budget {fraction:.0%} of {full.disk_bytes()} B: {source.disk_bytes()} B on disk, {hidden} "
          f"hidden states, {fronts} front ends, {source.stats['live']} live; max probability difference "
          f"{np.abs(got.probabilities - expected.probabilities).max():.2e}")
    assert source.disk_bytes() <= budget and source.stats["live"] == len(utts) - hidden
    assert source.stats.get("live_from_front_end", 0) == fronts
    assert {0.0: hidden == fronts == 0, 0.2: 0 < hidden + fronts < len(utts), 0.6: hidden and fronts,
            1.0: hidden == len(utts) and fronts == 0}[fraction]
    assert (fronts > 0) == (name == "wavlm" and 0 < fraction < 1)
    assert np.array_equal(got.predictions, expected.predictions)
    assert np.abs(got.probabilities - expected.probabilities).max() <= 1e-4


def test_a_shard_keeps_fp16_bf16_and_fp32_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, 3e38, -2.5e-3])
    tensors = {"bf16": torch.cat([special, torch.randn(97)]).reshape(1, 15, 7).bfloat16(),
               "fp16": torch.randn(2, 4, 3).half(), "fp32": torch.randn(1, 6, 2),
               "empty": torch.zeros(1, 0, 5).bfloat16()}
    assert ShardStore(tmp_path, tmp_path, 1 << 20).write(list(tensors.items())) == set(tensors)
    reader = ShardStore(tmp_path, tmp_path, 1 << 20)    # a fresh index, as another process reads it
    reader.refresh()
    assert {k: e[4] for k, e in reader.entries.items()} == {"bf16": "bfloat16", "fp16": "float16",
                                                            "fp32": "float32", "empty": "bfloat16"}
    for key, tensor in tensors.items():
        got = reader.read(key)
        assert got.dtype == tensor.dtype and got.shape == tensor.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key


def test_bf16_front_ends_count_2_bytes_a_value_and_predict_as_the_unbounded_cache(utts, tmp_path):
    """CUDA's front-end type, forced on CPU: a disk budget that holds every bf16 front end (fp32 ones take twice
    as much) and the hidden states of the first utterance instead of its front end keeps exactly that, and
    training and evaluation through it give the unbounded cache's predictions."""
    bb = backbone("wavlm")
    full = cached(bb, None)
    full.prepare(utts)
    frames = [full.length(u) for u in utts]
    front_bytes = [n * bb.front_end_dim * 2 for n in frames]
    hidden_bytes = frames[0] * bb.num_layers * bb.hidden_dim * 2
    budget = sum(front_bytes) + hidden_bytes - front_bytes[0] + ENTRY_BYTES * len(utts)
    assert budget < 2 * sum(front_bytes)
    source = CachedFeatures(bb, AudioBank(2, skip_bad=False), CPU, 8, tmp_path, 0, budget,
                            front_end_dtype=torch.bfloat16)
    source.prepare(utts)
    fronts = source.front_ends
    assert set(source.store.disk.entries) == {source.keys[utts[0].path]}
    assert set(fronts.store.disk.entries) == {fronts.keys[u.path] for u in utts[1:]}
    assert {e[4] for e in fronts.store.disk.entries.values()} == {"bfloat16"} and source.disk_bytes() <= budget
    assert source.stats["live"] == source.stats["live_from_front_end"] == len(utts) - 1

    scale = max(full.get(u).float().abs().max().item() for u in utts)
    error = max((source.get(u).float() - full.get(u).float()).abs().max().item() for u in utts) / scale
    expected, got = trained_predictions(full, utts), trained_predictions(source, utts)
    diff = np.abs(got.probabilities - expected.probabilities).max()
    print(f"\nbf16 front ends: hidden states within {error:.1e} of their scale, max probability difference "
          f"{diff:.2e}")
    assert 0 < error <= 1e-2
    assert np.array_equal(got.predictions, expected.predictions) and diff <= 5e-4


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_front_ends_are_kept_in_the_given_order_when_not_all_fit(where, utts, tmp_path):
    """A budget that holds the front ends of the first 4 utterances (in the order given, not by length) keeps
    exactly those; the rest run whole, and are not computed in prepare."""
    bb = backbone("wavlm")
    utts = [utts[i] for i in (3, 0, 6, 2, 7, 1, 5, 4)]
    full = cached(bb, None)
    full.prepare(utts)
    budget = sum(full.length(u) * bb.front_end_dim * 4 + ENTRY_BYTES for u in utts[:4])
    source = bounded(bb, tmp_path, *((budget, 0) if where == "disk" else (0, budget)))
    source.prepare(utts)
    fronts = source.front_ends
    kept = set(fronts.store.disk.entries) | set(fronts.store.memory)
    assert kept == {fronts.keys[u.path] for u in utts[:4]} and not source.store.disk.entries and not source.store.memory
    assert source.disk_bytes() <= budget and source.store.pool.used <= budget
    assert source.stats["computed"] == source.stats["live_from_front_end"] == 4 and source.stats["live"] == len(utts)
    expected, got = trained_predictions(full, utts), trained_predictions(source, utts)
    diff = np.abs(got.probabilities - expected.probabilities).max()
    print(f"\nfront ends of the first 4 in {where}: max probability difference {diff:.2e}")
    assert np.array_equal(got.predictions, expected.predictions) and diff <= 1e-4


@pytest.mark.parametrize("layers_batch", [8, 4])       # the batch in one pass of the layers, or in two
def test_a_batch_of_front_ends_is_written_from_the_layers_outputs(layers_batch, utts, tmp_path, monkeypatch):
    """A batch with only front ends stored pads nothing but its front ends, and equals, bit for bit, each
    utterance's hidden states padded again (fetch_stored, the path of a batch that mixes tiers)."""
    bb = backbone("wavlm")
    full = cached(bb, None)
    full.prepare(utts)
    budget = sum(full.length(u) * bb.front_end_dim * 4 + ENTRY_BYTES for u in utts)
    source = CachedFeatures(bb, AudioBank(2, skip_bad=False), CPU, layers_batch, tmp_path, budget, 0)
    source.prepare(utts)
    assert source.stats["live_from_front_end"] == len(utts) and not source.store.memory
    padded = []
    monkeypatch.setattr(cache_module, "pad_features", lambda feats: padded.append(len(feats)) or pad_features(feats))
    for batch in ([utts[i] for i in (3, 0, 6, 2, 7, 1)], utts[5:6]):
        padded.clear()
        hidden, mask = source.fetch(batch)
        assert sum(padded) == len(batch) and len(padded) == -(-len(batch) // layers_batch)
        expected_hidden, expected_mask = pad_features(source.fetch_stored(batch))
        assert torch.equal(mask, expected_mask) and torch.equal(hidden, expected_hidden)
        assert hidden.dtype == torch.float16 and not hidden[:, ~mask].any()     # padding is zero


@pytest.mark.parametrize("name", ["whisper_tiny", "apc"])
def test_hidden_states_are_kept_in_the_given_order_when_not_all_fit(name, utts, tmp_path):
    """Backbones without a stored front end: the first 3 utterances in the order given (not by length) are stored,
    the rest run live and are not computed in prepare."""
    bb = backbone(name)
    utts = [utts[i] for i in (3, 0, 6, 2, 7, 1, 5, 4)]
    full = cached(bb, None)
    full.prepare(utts)
    stored = [full.store.memory[full.keys[u.path]] for u in utts[:3]]
    budget = sum(t.numel() * t.element_size() + ENTRY_BYTES for t in stored)
    source = bounded(bb, tmp_path, budget)
    assert source.prepare(utts) == utts
    assert set(source.store.disk.entries) == {source.keys[u.path] for u in utts[:3]} and source.disk_bytes() <= budget
    assert source.stats["computed"] == 3 and source.stats["live"] == 5
    assert [source.length(u) for u in utts] == [full.length(u) for u in utts]
    expected, got = trained_predictions(full, utts), trained_predictions(source, utts)
    assert np.array_equal(got.predictions, expected.predictions)
    assert np.abs(got.probabilities - expected.probabilities).max() <= 1e-4


def test_memory_holds_what_the_disk_cannot(utts, tmp_path):
    bb = backbone("wavlm")
    full = cached(bb, None)
    full.prepare(utts)
    budget = full.store.memory_bytes // 3
    source = bounded(bb, tmp_path, disk_budget=budget, memory_budget=budget)
    source.prepare(utts)
    tiers = (source, source.front_ends)
    on_disk = {k for t in tiers for k in t.store.disk.entries}
    in_memory = {k for t in tiers for k in t.store.memory}
    assert source.disk_bytes() <= budget and 0 < source.store.pool.used == sum(t.store.memory_bytes for t in tiers) <= budget
    assert on_disk and in_memory - on_disk       # memory holds what the disk cannot (and copies of disk entries)
    hidden = len(source.store.disk.entries) + len(source.store.memory)
    assert source.stats["live"] == len(utts) - hidden and source.stats["live_from_front_end"] > 0


def test_a_damaged_front_end_shard_is_recomputed(utts, tmp_path):
    bb = backbone("wavlm")
    full = cached(bb, None)
    full.prepare(utts)
    budget = int(0.6 * full.store.memory_bytes)      # every front end, and a few hidden states
    first = bounded(bb, tmp_path, budget)
    first.prepare(utts)
    hidden, fronts = len(first.store.disk.entries), len(first.front_ends.store.disk.entries)
    [shard] = first.front_ends.store.disk.folder.glob("shard-*.bin")
    assert hidden > 0 and fronts > 0 and first.stats["live_from_front_end"] == fronts
    shard.write_bytes(shard.read_bytes()[:-100])
    second = bounded(bb, tmp_path, budget)
    second.prepare(utts)
    assert not shard.exists() and second.stats["from_disk"] == hidden
    assert second.stats["computed"] == len(utts) - hidden and second.stats["live_from_front_end"] > 0
    assert second.disk_bytes() <= budget
    assert all(fp16_close(second.get(u), full.get(u)) for u in utts)

    [shard] = second.front_ends.store.disk.folder.glob("shard-*.bin")
    flipped = bytearray(shard.read_bytes())  # one byte of data changed: caught by its checksum when first read
    flipped[-1] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    third = bounded(bb, tmp_path, budget)
    third.prepare(utts)
    assert all(fp16_close(third.get(u), full.get(u)) for u in utts)   # those of the damaged shard run whole
    assert not shard.exists()


def test_a_damaged_shard_is_recomputed_and_the_others_kept(utts, tmp_path):
    bb = backbone("wavlm")
    first = cached(bb, tmp_path)
    first.prepare(utts[:4])
    first.prepare(utts[4:])                 # two prepare calls, two shards
    shards = sorted(first.store.disk.folder.glob("shard-*.bin"))
    truncated = first.store.disk.entries[first.key(utts[0].path)][0]
    kept = next(p for p in shards if p != truncated)
    assert len(shards) == 2
    truncated.write_bytes(truncated.read_bytes()[:-100])
    second = cached(bb, tmp_path)
    second.prepare(utts)
    assert second.stats == {"computed": 4, "from_disk": 4, "from_memory": 0, "live": 0, "live_from_front_end": 0}
    assert kept.is_file() and not truncated.exists() and len(list(first.store.disk.folder.glob("shard-*.bin"))) == 2
    assert all(torch.equal(second.get(u), first.get(u)) for u in utts)

    flipped = bytearray(kept.read_bytes())  # same size, one byte of data changed: caught by its checksum
    flipped[-1] ^= 0xFF
    kept.write_bytes(bytes(flipped))
    third = cached(bb, tmp_path)
    third.prepare(utts)
    assert third.stats["from_disk"] == len(utts)
    assert all(fp16_close(third.get(u), first.get(u)) for u in utts)  # the damaged ones computed again, alone
    assert not kept.exists()


FILL_CACHE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
import torch
from model.backbones import build_backbone
from utils.data.utterances import Utterance
from utils.features.cache import CachedFeatures
from utils.features.source import AudioBank
torch.set_num_threads(1)
bb = build_backbone("wavlm", random_init=True, tiny=True)
utts = [Utterance(p, "s", "F", p, 0) for p in sys.argv[3:]]
source = CachedFeatures(bb, AudioBank(2, skip_bad=False), torch.device("cpu"), 8, Path(sys.argv[2]), 0, 1 << 30)
source.prepare(utts)
print(json.dumps(source.stats))
"""


@pytest.mark.slow
def test_two_processes_filling_one_cache_at_once(utts, tmp_path):
    command = [sys.executable, "-c", FILL_CACHE, str(REPO), str(tmp_path), *(u.path for u in utts)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    stats = sorted((json.loads(out.splitlines()[-1]) for out, _ in outputs), key=lambda s: s["computed"])
    assert [s["computed"] for s in stats] == [0, len(utts)] and stats[0]["from_disk"] == len(utts)
    reader = cached(backbone("wavlm"), tmp_path)
    reader.prepare(utts)
    assert reader.stats["from_disk"] == len(utts) and len(reader.store.disk.entries) == len(utts)
    assert len(list(reader.store.disk.folder.glob("shard-*.bin"))) == 1
    fresh = cached(backbone("wavlm"), None)
    fresh.prepare(utts)
    assert all(torch.equal(reader.get(u), fresh.get(u)) for u in utts)


def test_an_entry_found_on_disk_counts_once_and_the_report_says_what_happened(utts, tmp_path):
    """A fold prepares its splits together, then each split: an entry still only on disk was counted each time."""
    bb = backbone("wavlm")
    cached(bb, tmp_path).prepare(utts)
    reader = CachedFeatures(bb, AudioBank(2, skip_bad=False), CPU, 8, tmp_path, memory_budget_bytes=0)
    reader.prepare(utts)
    reader.prepare(utts[:3])
    assert reader.stats["from_disk"] == len(utts) and not reader.store.memory
    assert reader.cache_report() == (f"feature cache: 0 utterances computed, {len(utts)} read from disk, 0 run live "
                                     f"on every batch; {reader.disk_bytes() / 2**20:.1f} MiB on disk under {tmp_path}")


def test_cache_budgets_are_logged_once_per_run_even_when_they_move(tmp_path, caplog):
    """Privacy and safety make a source per fold; free memory moves between folds, the line is not repeated."""
    with caplog.at_level("INFO", logger="trust-ser"):
        assert feature_budgets(2.0, 1.0, CPU, tmp_path) == (2 ** 30, 2 * 2 ** 30)
        assert feature_budgets(2.0, 1.5, CPU, tmp_path) == (1.5 * 2 ** 30, 2 * 2 ** 30)
    assert [r.getMessage() for r in caplog.records] == [
        f"feature cache budgets: 1.0 GiB of cpu memory, 2.0 GiB on disk under {tmp_path}"]
