import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from utils.runs.identity import RunConfig
from utils.training.pipeline import build_head, make_backbone
from utils.trust.sustainability import count_flops, count_parameters, measure_latency, thop_macs, thop_style_gflops


def test_linear_flops_are_two_per_multiply_add():
    batch, d_in, d_out = 5, 12, 7
    assert count_flops(nn.Linear(d_in, d_out), (torch.randn(batch, d_in),)) == 2 * batch * d_in * d_out


def test_conv1d_flops_follow_the_formula():
    batch, c_in, c_out, kernel, stride, padding, groups, length = 3, 4, 6, 5, 2, 1, 2, 40
    conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups)
    out_len = (length + 2 * padding - kernel) // stride + 1
    expected = 2 * batch * c_out * out_len * (c_in // groups) * kernel
    assert count_flops(conv, (torch.randn(batch, c_in, length),)) == expected


def test_flops_of_a_stack_add_up_and_leave_no_gradients():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    x = torch.randn(4, 10, requires_grad=True)
    assert count_flops(model, (x,)) == 2 * 4 * (10 * 20 + 20 * 3)
    assert x.grad is None and all(p.grad is None for p in model.parameters())


def test_parameter_counts_total_trainable_and_shared():
    backbone, head = nn.Linear(10, 20), nn.Linear(20, 3)          # 220 and 63 parameters
    backbone.requires_grad_(False)
    assert count_parameters(backbone, head) == {"total": 283, "trainable": 63}
    assert count_parameters(head, head) == {"total": 63, "trainable": 63}


def test_latency_is_positive_and_ordered():
    calls = []
    result = measure_latency(lambda: calls.append(sum(range(2000))), warmup=2, repeats=5, device="cpu")
    assert len(calls) == 7 and result["repeats"] == 5
    assert 0 < result["min_s"] <= result["median_s"] <= result["p90_s"] <= result["max_s"]
    assert result["mean_s"] > 0


def _tiny(model: str, **changes):
    run = RunConfig(dataset="demo", pretrain_model=model, random_init=True, tiny=True, device="cpu", **changes)
    backbone = make_backbone(run, torch.device("cpu")).eval()
    return backbone, build_head(run, backbone, 4).eval()


class _Attention(nn.Module):
    def forward(self, q):
        return nn.functional.scaled_dot_product_attention(q, q, q)


def test_attention_is_counted_on_cpu_as_on_its_math_path():
    batch, heads, frames, head_dim = 2, 3, 10, 8
    q = torch.randn(batch, heads, frames, head_dim)
    with torch.no_grad(), FlopCounterMode(display=False) as fused:
        _Attention()(q)                                         # the CPU's fused kernel: no flop formula
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math:
        _Attention()(q)
    expected = 2 * (2 * batch * heads * frames * frames * head_dim)     # q @ k^T and weights @ v
    assert fused.get_total_flops() < expected == math.get_total_flops() == count_flops(_Attention(), (q,))


def test_one_transformer_layer_by_hand():
    backbone, _ = _tiny("wav2vec2_0")
    layer = backbone.model.encoder.layers[0]
    dim, ffn, frames = layer.attention.q_proj.in_features, layer.feed_forward.intermediate_dense.out_features, 13
    projections = 4 * 2 * frames * dim * dim                    # q, k, v, out
    attention = 2 * (2 * frames * frames * dim)                 # over all heads: q @ k^T and weights @ v
    feed_forward = 2 * (2 * frames * dim * ffn)
    assert count_flops(layer, (torch.randn(1, frames, dim),)) == projections + attention + feed_forward


def test_thop_counts_the_head_on_50_frames_by_hand():
    _, head = _tiny("apc", conv_layers=2, hidden_size=16)
    dim, hidden = head.model_seq[0].in_channels, head.model_seq[0].out_channels
    frames = (torch.randn(head.weights.numel(), 1, 50, dim), torch.ones(1, 50, dtype=torch.bool))
    # two pointwise convs and the attention pooling per frame, then the two classifier layers; no bias, no ReLU
    assert thop_macs(head, frames) == 50 * hidden * (dim + hidden + 1) + hidden * (hidden + 4)


def test_original_style_gflops_of_whisper_equal_thop_on_its_encoder_by_hand():
    """The original's count: thop on Whisper's encoder with the log-mel of 6 s (600 mel frames, 300 after conv2)."""
    backbone, head = _tiny("whisper_tiny", conv_layers=2, hidden_size=16)
    config, state = backbone.encoder.config, set(backbone.state_dict())
    d, mels, mel_frames, frames = config.d_model, config.num_mel_bins, 600, 300
    convs = mel_frames * d * mels * 3 + frames * d * d * 3
    layer_norm = 4 * frames * d                                 # thop: 2 per element, twice with an affine part
    layer = 2 * layer_norm + frames * (4 * d * d + 2 * d * config.encoder_ffn_dim)
    encoder = convs + config.encoder_layers * layer + layer_norm
    head_frames = (torch.randn(backbone.num_layers, 1, 50, d), torch.ones(1, 50, dtype=torch.bool))
    assert thop_style_gflops(backbone, head, torch.device("cpu")) == \
        pytest.approx((encoder + thop_macs(head, head_frames)) / 1e9, rel=1e-12)
    assert set(backbone.state_dict()) == state and set(head.state_dict())     # thop's counters are gone
    assert not any("total_ops" in k for k in head.state_dict())
