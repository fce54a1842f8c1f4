"""The CNN head: flags honoured, masks make padding invisible, pooling and layer weighting."""
import torch

from model.heads import CNNSelfAttention, masked_mean
from utils.data.utterances import pad_features


def _head(pooling: str, conv_layers: int = 2, hidden: int = 16) -> CNNSelfAttention:
    torch.manual_seed(0)
    return CNNSelfAttention(input_dim=8, num_enc_layers=3, output_class_num=4, hidden_dim=hidden,
                            conv_layers=conv_layers, pooling_method=pooling).eval()


def test_conv_layers_and_hidden_size_are_honoured():
    head = _head("mean", conv_layers=4, hidden=24)
    convs = [m for m in head.model_seq if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 4
    assert convs[0].in_channels == 8 and all(c.out_channels == 24 for c in convs)
    assert head.out_layer[-1].out_features == 4


def test_padded_batch_equals_one_by_one_for_both_poolings():
    torch.manual_seed(1)
    feats = [torch.randn(3, n, 8) for n in (5, 9, 2)]
    for pooling in ("mean", "att"):
        head = _head(pooling)
        batch, mask = pad_features(feats)
        batch[:, ~mask] = 1e3          # garbage in padding must not leak through the mask
        together = head(batch, mask)
        alone = torch.cat([head(f[:, None], torch.ones(1, f.shape[1], dtype=torch.bool)) for f in feats])
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[True, True, False]])
    assert masked_mean(x, mask).item() == 2.0


def test_layer_weights_start_uniform_and_are_softmaxed():
    head = _head("mean")
    feats = torch.randn(3, 1, 4, 8)
    mask = torch.ones(1, 4, dtype=torch.bool)
    mean_layer = feats.mean(0)
    torch.testing.assert_close(head(feats, mask), head(mean_layer, mask), rtol=1e-5, atol=1e-6)
