"""Downstream head: layer-weighted sum -> pointwise Conv1d stack -> masked pooling -> classifier."""
import torch
from torch import nn
from torch.nn import functional as F


class SelfAttentionPooling(nn.Module):
    """Attention pooling over time (Safari et al., 2020); padded frames get zero weight."""

    def __init__(self, input_dim: int):
        super().__init__()
        self.W = nn.Linear(input_dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.W(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1).unsqueeze(-1)
        return (x * weights).sum(dim=1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


class CNNSelfAttention(nn.Module):
    """The original's CNN head, with --conv_layers and --hidden_size honoured."""

    def __init__(self, input_dim: int, num_enc_layers: int, output_class_num: int, hidden_dim: int = 256,
                 conv_layers: int = 3, pooling_method: str = "att", dropout: float = 0.2):
        super().__init__()
        if conv_layers < 1:
            raise ValueError("conv_layers must be >= 1")
        layers: list[nn.Module] = [nn.Conv1d(input_dim, hidden_dim, 1)]
        for _ in range(conv_layers - 1):
            layers += [nn.ReLU(), nn.Dropout(dropout), nn.Conv1d(hidden_dim, hidden_dim, 1)]
        self.model_seq = nn.Sequential(*layers)
        self.pooling_method = pooling_method
        self.pooling = SelfAttentionPooling(hidden_dim)
        self.weights = nn.Parameter(torch.zeros(num_enc_layers))
        self.out_layer = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, output_class_num))

    def embed(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pooled utterance vector the classifier sees: features [L, B, F, D] (or [B, F, D]), mask [B, F]
        (True = real frame) -> [B, hidden_dim]."""
        if features.dim() == 4:
            w = F.softmax(self.weights, dim=-1).to(features.dtype)
            features = torch.einsum("l,lbfd->bfd", w, features)
        x = self.model_seq(features.transpose(1, 2)).transpose(1, 2)
        return self.pooling(x, mask) if self.pooling_method == "att" else masked_mean(x, mask)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """features [L, B, F, D] (or [B, F, D]), mask [B, F] (True = real frame) -> logits [B, C]."""
        return self.out_layer(self.embed(features, mask))
