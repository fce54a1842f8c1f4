"""The GPU path's parts, checked on CPU: WavLM's fused attention against Hugging Face's layers, no host round trip
of the memory tier, one host->device move per batch, no per-utterance synchronisation in the hot paths."""
import threading
import traceback
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from model.backbones import build_backbone
from model.backbones.hf import hf_classes
from model.backbones.wav2vec2 import TINY_SSL, WavLMBackbone, fused_wavlm_layer
from model.heads import CNNSelfAttention
from utils.core.io import write_wav
from utils.data.utterances import Utterance
from utils.features import source as source_module
from utils.features.cache import CachedFeatures
from utils.features.shards import ENTRY_BYTES
from utils.features.source import AudioBank, LiveFeatures, frozen_pass
from utils.training import loop
from utils.training.loop import train_epoch
from utils.training import protocol as protocol_module
from utils.training.pipeline import make_backbone
from utils.training.protocol import protocol_source
from utils.runs.identity import RunConfig

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
READS_BACK = {"item", "tolist", "__int__", "__index__", "__float__", "__bool__", "cpu", "numpy"}   # wait for a device

TINY_WAVLM = {**TINY_SSL, "num_buckets": 32, "max_bucket_distance": 64, "hidden_dropout": 0.0,
              "attention_dropout": 0.0, "activation_dropout": 0.0, "num_attention_heads": 4}


def _padded_batch(dim: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(len(lengths), max(lengths), dim)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return x.masked_fill(~mask[..., None], 0.0), mask


@pytest.mark.parametrize("stable", [False, True])
def test_fused_wavlm_layer_equals_hugging_faces(stable):
    config_class, model_class = hf_classes("wavlm")
    torch.manual_seed(1)
    model = model_class(config_class.from_dict({**TINY_WAVLM, "do_stable_layer_norm": stable})).eval()
    for p in model.parameters():        # random weights further from their initial values (gates, biases)
        p.data.add_(0.05 * torch.randn_like(p))
    x, mask = _padded_batch(model.config.hidden_size, [37, 20, 9])
    bias = model.encoder.layers[0].attention.compute_bias(x.shape[1], x.shape[1])
    hf_bias = bias.unsqueeze(0).expand(len(x), -1, -1, -1).reshape(-1, *bias.shape[1:])
    with torch.no_grad():
        for index, layer in enumerate(model.encoder.layers):
            kwargs = {} if stable else {"index": index}
            expected = layer(x, attention_mask=mask.long(), position_bias=hf_bias, **kwargs)[0]
            got = fused_wavlm_layer(layer, x, mask, bias, stable)
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
            x = expected


def test_fused_attention_in_the_backbone_equals_hugging_faces_path():
    backbone = build_backbone("wavlm", random_init=True, tiny=True)
    assert isinstance(backbone, WavLMBackbone) and backbone.fused_attention is None
    torch.manual_seed(2)
    wav = torch.randn(3, 16000)
    lengths = torch.tensor([16000, 9000, 4000])
    wav[1, 9000:], wav[2, 4000:] = 0, 0
    with torch.no_grad():
        expected, _, mask = backbone(wav, lengths)       # CPU: Hugging Face's layers
        backbone.fused_attention = True
        try:
            got, _, fused_mask = backbone(wav, lengths)
        finally:
            backbone.fused_attention = None
    assert torch.equal(mask, fused_mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_wav2vec2_family_layers_use_scaled_dot_product_attention():
    """wav2vec 2.0 / HuBERT / data2vec go through Hugging Face's own SDPA attention (WavLM's is eager only)."""
    backbone = build_backbone("wav2vec2_0", random_init=True, tiny=True)
    assert backbone.model.config._attn_implementation == "sdpa"


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_only_the_main_thread_turns_the_autotuner_on_for_a_frozen_pass(monkeypatch):
    """cudnn.benchmark is global: a frozen pass in the read-ahead thread leaves it off, for the head's training step
    runs in the main thread meanwhile (the CUDA branch, run on CPU: only the flag is looked at)."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)     # as set_seed leaves it
    backbone = build_backbone("tera", random_init=True, tiny=True)
    seen = {}

    def look(where: str) -> None:
        with frozen_pass(backbone, torch.device("cuda")):
            seen[where] = torch.backends.cudnn.benchmark

    look("main")
    reader = threading.Thread(target=look, args=("read-ahead",))
    reader.start()
    reader.join()
    assert seen == {"main": True, "read-ahead": False} and torch.backends.cudnn.benchmark is False


def test_frozen_linear_weights_give_what_autocast_computes_and_are_put_back():
    backbone = build_backbone("wavlm", random_init=True, tiny=True)
    torch.manual_seed(3)
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    linear = backbone.model.encoder.layers[0].attention.q_proj
    weight = linear.weight
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _, _ = backbone(wav, lengths)
        with backbone.frozen_linear_weights(torch.bfloat16):
            assert linear.weight.dtype == torch.bfloat16
            got, _, _ = backbone(wav, lengths)
    assert linear.weight is weight and weight.dtype == torch.float32
    assert torch.equal(got, expected)
    with torch.no_grad():
        weight.mul_(2)          # a reload: the copies are made again
        with backbone.frozen_linear_weights(torch.bfloat16):
            assert torch.equal(linear.weight.float(), weight.to(torch.bfloat16).float())


def test_frozen_linear_weights_are_put_back_when_passes_in_two_threads_overlap():
    """The read-ahead thread's frozen pass and the main thread's may overlap in any order: the weights are back
    only when both are out, and then they are the original parameters."""
    backbone = build_backbone("wavlm", random_init=True, tiny=True)
    linear = backbone.model.encoder.layers[0].attention.q_proj
    weight = linear.weight
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with backbone.frozen_linear_weights(torch.bfloat16):
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with backbone.frozen_linear_weights(torch.bfloat16):
            second_in.set()
            first_out.wait(10)
            seen.append(linear.weight.dtype)        # the other pass has left; this one still computes in bf16

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == [torch.bfloat16]
    assert linear.weight is weight and weight.dtype == torch.float32


def test_an_input_gradient_through_the_kept_bf16_weights_equals_autocasts():
    """An attack's pass (low_precision): the frozen layers' bf16 copies give autocast's input gradient exactly."""
    backbone = build_backbone("wavlm", random_init=True, tiny=True)
    torch.manual_seed(3)
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 5000])
    grads = []
    for kept in (False, True):
        x = wav.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16), \
                (backbone.frozen_linear_weights(torch.bfloat16) if kept else nullcontext()):
            assert backbone.model.encoder.layers[0].attention.q_proj.weight.dtype == (torch.bfloat16 if kept
                                                                                     else torch.float32)
            hidden, _, _ = backbone(x, lengths)
        hidden.float().pow(2).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().max() > 0 and torch.equal(*grads)


def test_original_train_mode_batches_use_the_kept_bf16_weights(monkeypatch):
    """--protocol original's live train-mode pass of a frozen backbone enters low_precision (on CUDA: autocast with
    the frozen layers' bf16 copies, not re-cast on every call), as the attacks do (tests/test_protocol.py)."""
    entered = []
    monkeypatch.setattr(protocol_module, "low_precision", lambda backbone, device: entered.append(1) or nullcontext())
    run = RunConfig(pretrain_model="wavlm", tiny=True, random_init=True, protocol="original")
    backbone = make_backbone(run, CPU)
    source = protocol_source(run, backbone, LiveFeatures(backbone, AudioBank(2, skip_bad=False), CPU, True), CPU)
    backbone.train()
    source.finish((0.1 * torch.randn(2, 6000), torch.tensor([6000, 4000])))
    assert entered == [1]


@pytest.fixture(scope="module")
def utts(tmp_path_factory) -> list[Utterance]:
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        path = folder / f"u{i}.wav"
        write_wav(path, (0.1 * rng.standard_normal(4000 + 1500 * i)).astype(np.float32), 16000)
        out.append(Utterance(f"u{i}", "s", "F", str(path), i % 4))
    return out


def _project_file(filename: str) -> bool:
    return filename.startswith(str(REPO)) and not any(part in filename for part in ("/tests/", "site-packages"))


class ReadBacks(TorchFunctionMode):
    """Counts, by the project's line that calls it, every tensor call that reads a value back to the host (on a
    GPU, a synchronisation)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS_BACK:
            caller = [f for f in traceback.extract_stack()[:-1] if not f.filename.endswith("torch/overrides.py")][-1]
            if _project_file(caller.filename):      # not torch.optim's, even with the venv inside the repository
                self.calls[f"{Path(caller.filename).name}:{caller.lineno} {func.__name__}"] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ["tera", "wavlm"])      # the one-tier pass, the two-tier pass (front ends)
def test_the_feature_pass_reads_back_per_batch_not_per_utterance(name, utts):
    counts = []
    for n in (4, 8):                                      # one batch either way
        source = CachedFeatures(build_backbone(name, random_init=True, tiny=True), AudioBank(2, skip_bad=False),
                                CPU, 8, None, memory_budget_bytes=1 << 30)
        with ReadBacks() as reads:
            source.prepare(utts[:n])
        assert source.stats["computed"] == n
        counts.append(reads.calls)
    assert counts[0] == counts[1], counts


def test_a_bounded_batch_reads_back_per_batch_not_per_utterance(utts):
    """A batch made from stored front ends (the layers run live from them, in one pass) reads back the same for 4
    utterances as for 8."""
    backbone = build_backbone("wavlm", random_init=True, tiny=True)
    full = CachedFeatures(backbone, AudioBank(2, skip_bad=False), CPU, 8, None, memory_budget_bytes=1 << 30)
    full.prepare(utts)
    budget = sum(full.length(u) for u in utts) * backbone.front_end_dim * 4 + len(utts) * ENTRY_BYTES
    source = CachedFeatures(backbone, AudioBank(2, skip_bad=False), CPU, 8, None, memory_budget_bytes=budget)
    source.prepare(utts)
    assert source.stats["live_from_front_end"] == len(utts) and not source.store.memory
    counts = []
    for n in (4, 8):
        with ReadBacks() as reads:
            source.fetch(utts[:n])
        counts.append(reads.calls)
    assert counts[0] == counts[1], counts


def _head_and_source(utts, name="tera"):
    backbone = build_backbone(name, random_init=True, tiny=True)
    source = CachedFeatures(backbone, AudioBank(2, skip_bad=False), CPU, 8, None, memory_budget_bytes=1 << 30)
    source.prepare(utts)
    torch.manual_seed(0)
    head = CNNSelfAttention(backbone.hidden_dim, backbone.num_layers, 4, hidden_dim=8, conv_layers=2)
    return backbone, head, source


def test_a_training_step_reads_nothing_back(utts):
    """Loss, labels and predictions stay on the device until the epoch ends: the same reads for 2 or 4 steps."""
    backbone, head, source = _head_and_source(utts)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    counts = []
    for batch_size in (4, 2):
        with ReadBacks() as reads:
            train_epoch(head, backbone, source, utts, nn.NLLLoss(), optimizer, batch_size,
                        torch.Generator().manual_seed(0), 4)
        counts.append(reads.calls)
    assert counts[0] == counts[1], counts


def test_a_batch_and_the_labels_move_to_the_device_once(utts, monkeypatch):
    moves = Counter()

    def counting(where):
        def move(t, device):
            moves[where] += 1
            return t.to(device)
        return move

    monkeypatch.setattr(source_module, "to_device", counting("batch"))
    monkeypatch.setattr(loop, "to_device", counting("labels"))
    backbone = build_backbone("tera", random_init=True, tiny=True)
    source = LiveFeatures(backbone, AudioBank(2, skip_bad=False), CPU, round_like_cache=True)
    head = CNNSelfAttention(backbone.hidden_dim, backbone.num_layers, 4, hidden_dim=8, conv_layers=2)
    wav, lengths = source.fetch(utts[:4])
    assert moves == {"batch": 1} and lengths.device == CPU        # lengths stay on the host, where they are read
    train_epoch(head, backbone, source, utts, nn.NLLLoss(), torch.optim.Adam(head.parameters()), 2,
                torch.Generator().manual_seed(0), 4)
    assert moves == {"batch": 1 + 4, "labels": 1}


def test_a_training_split_smaller_than_the_batch_size_is_one_batch(utts):
    backbone = build_backbone("tera", random_init=True, tiny=True)
    source = LiveFeatures(backbone, AudioBank(2, skip_bad=False), CPU, round_like_cache=True)
    head = CNNSelfAttention(backbone.hidden_dim, backbone.num_layers, 4, hidden_dim=8, conv_layers=2)
    sizes, fetch = [], source.fetch
    source.fetch = lambda batch: sizes.append(len(batch)) or fetch(batch)
    before = [p.detach().clone() for p in head.parameters()]
    train_epoch(head, backbone, source, utts, nn.NLLLoss(), torch.optim.Adam(head.parameters()), 64,
                torch.Generator().manual_seed(0), 4)
    assert sizes == [len(utts)] and len(utts) < 64
    assert any(not torch.equal(b, p) for b, p in zip(before, head.parameters()))      # it trained


class Computed(torch.Tensor):
    """What a backbone pass computed, and everything made of it; `.cpu()` / `.numpy()` results are marked."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if getattr(func, "__name__", "") in ("cpu", "numpy") and isinstance(out, Computed):
            out.host_copy = True
        return out


def _computed(method):
    def run(*args, **kwargs):
        return tuple(t.as_subclass(Computed) if isinstance(t, torch.Tensor) else t for t in method(*args, **kwargs))
    return run


@pytest.mark.parametrize("name, disk", [("tera", False), ("tera", True), ("wavlm", True)])
def test_the_memory_tier_never_round_trips_through_the_host(name, disk, utts, tmp_path, monkeypatch):
    """Memory keeps the computed tensors themselves; only a disk write copies them to the host (once each)."""
    backbone = build_backbone(name, random_init=True, tiny=True)
    for method in ("forward", "front_end", "forward_from_front_end"):
        if hasattr(backbone, method):
            monkeypatch.setattr(backbone, method, _computed(getattr(backbone, method)))
    source = CachedFeatures(backbone, AudioBank(2, skip_bad=False), CPU, 8, tmp_path if disk else None,
                            memory_budget_bytes=1 << 30, disk_budget_bytes=1 << 30)
    source.prepare(utts)
    memory = source.store.memory
    assert len(memory) == len(utts) and source.stats["computed"] == len(utts)
    assert all(isinstance(t, Computed) and not hasattr(t, "host_copy") for t in memory.values())
    assert len(source.store.disk.entries if disk else []) == (len(utts) if disk else 0)
