import torch
from torch import nn

from utils.trust.sustainability import count_flops, count_parameters, measure_latency


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
