"""The P7 ranker: reads K context vectors and predicts the unit vector of the next chunk.

    x (B, K, D) -> Linear D->d_model + learned positions -> encoder (transformer or LSTM)
    -> last position (B, d_model) -> head d_model->d_model->D -> q = normalize(.)
    -> anchored p = normalize(lambda * q + (1 - lambda) * normalize(mean_k x))

The anchor keeps predictions near the context's topic. lambda is a real parameter: it gets
a gradient and the trainer projects it back into [lambda_min, lambda_max] after each step
(the original read it with .item(), so it never learned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tune_p7.config import ModelConfig


class Block(nn.Module):
    """Pre-norm transformer encoder layer that can attend from the last position only."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm_attention = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.projection = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x (B, T, W) -> (B, T, W), or (B, 1, W) when last_only.

        last_only: only the last position's output is needed (final layer), so its query,
        projection and MLP are computed for that position alone; keys/values use all T.
        """
        batch, length, width = x.shape
        normed = self.norm_attention(x)
        if last_only:
            # The query rows of the qkv weight applied to the last position only.
            weight_q, weight_kv = self.qkv.weight.split((width, 2 * width))
            bias_q, bias_kv = self.qkv.bias.split((width, 2 * width))
            q = F.linear(normed[:, -1:], weight_q, bias_q)                  # (B, 1, W)
            k, v = F.linear(normed, weight_kv, bias_kv).split(width, dim=2)  # (B, T, W) each
            x = x[:, -1:]
        else:
            q, k, v = self.qkv(normed).split(width, dim=2)                  # (B, T, W) each
        heads = lambda t: t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(  # (B, nh, T_q, hs)
            heads(q), heads(k), heads(v), dropout_p=self.dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, x.shape[1], width)
        x = x + self.residual_dropout(self.projection(attended))
        return x + self.mlp(self.norm_mlp(x))


class Ranker(nn.Module):
    """P7 directional ranker. forward(contexts (B, K, D)) -> predictions (B, D), unit norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.input = nn.Linear(config.dim, config.d_model)
        # Learned positions (the original's were a frozen zero tensor, so order was invisible).
        self.positions = nn.Parameter(0.02 * torch.randn(config.context, config.d_model))
        if config.architecture == "transformer":
            self.blocks = nn.ModuleList(Block(config.d_model, config.heads, config.dropout)
                                        for _ in range(config.layers))
            self.final_norm = nn.LayerNorm(config.d_model)
        else:
            self.lstm = nn.LSTM(config.d_model, config.d_model, config.layers, batch_first=True,
                                dropout=config.dropout if config.layers > 1 else 0.0)
        self.head = nn.Sequential(nn.Linear(config.d_model, config.d_model), nn.GELU(),
                                  nn.Linear(config.d_model, config.dim))
        anchor = torch.tensor(float(config.anchor_lambda))
        if config.learn_lambda:
            self.anchor_lambda = nn.Parameter(anchor)
        else:
            self.register_buffer("anchor_lambda", anchor)

    def encode(self, contexts: torch.Tensor) -> torch.Tensor:
        """contexts (B, K, D) -> last-position state (B, d_model)."""
        x = self.input(contexts) + self.positions[: contexts.shape[1]]  # (B, K, d_model)
        if self.config.architecture == "lstm":
            return self.lstm(x)[0][:, -1]
        for index, block in enumerate(self.blocks):
            x = block(x, last_only=index == len(self.blocks) - 1)
        return self.final_norm(x[:, -1])

    def forward(self, contexts: torch.Tensor) -> torch.Tensor:
        """contexts (B, K, D) unit rows -> anchored prediction p (B, D), unit norm."""
        own = F.normalize(self.head(self.encode(contexts)).float(), dim=-1)  # q (B, D)
        anchor = F.normalize(contexts.float().mean(dim=1), dim=-1)          # (B, D)
        weight = self.anchor_lambda.float()
        return F.normalize(weight * own + (1 - weight) * anchor, dim=-1)

    @torch.no_grad()
    def project_lambda(self) -> None:
        """Clamp a learnable lambda back into [lambda_min, lambda_max] (projected gradient)."""
        if isinstance(self.anchor_lambda, nn.Parameter):
            self.anchor_lambda.clamp_(self.config.lambda_min, self.config.lambda_max)
