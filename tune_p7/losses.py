"""P7 training losses: InfoNCE ranking, prev-repel hinge, directional gate, teacher pull.

    total = mean_i w_i * (w_rank * InfoNCE_i + w_margin * hinge_i) / mean_i w_i
            + w_teacher * teacher          (teacher only while epoch < warmup_epochs)

All vectors are unit rows, so dot products are cosines. Scores are matrix products
(B x (B + 1 + H)), never a (B, B, D) tensor or a Python loop, and only matmul and
elementwise ops are used, so the loss runs on CUDA, MPS and CPU alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tune_p7.config import LossConfig

DUPLICATE_COSINE = 1.0 - 1e-6  # candidates this close to the positive are the same vector


@dataclass
class LossParts:
    """Every component of one batch's loss; `total` is what is minimised."""

    total: torch.Tensor
    rank: torch.Tensor        # weighted mean InfoNCE
    margin: torch.Tensor      # weighted mean prev-repel hinge (a loss, not the margin Delta)
    teacher: torch.Tensor     # teacher pull (0 after warm-up)
    gate_weight_mean: torch.Tensor

    def items(self):
        return {"loss": self.total, "loss_rank": self.rank, "loss_margin": self.margin,
                "loss_teacher": self.teacher}.items()


def gate_weights(contexts: torch.Tensor, targets: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """Per-window directional gate w (B,) from the data's forward signal.

    f_i = cos(c_t, next) - cos(c_t, c_{t-1}); w_i = 1 if f_i >= threshold else low weight.
    (The original compared with cos(c_t, c_t) = 1, so every weight was 0.25.)
    """
    forward = forward_signal(contexts, targets)
    full = torch.ones_like(forward)
    return torch.where(forward >= config.gate_threshold, full, full * config.gate_low_weight)


def forward_signal(contexts: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """f (B,) = cos(c_t, c_{t+1}) - cos(c_t, c_{t-1}) for unit contexts (B, K, D), targets (B, D)."""
    last = contexts[:, -1]
    return (last * targets).sum(-1) - (last * contexts[:, -2]).sum(-1)


def info_nce(predictions: torch.Tensor, targets: torch.Tensor, previous: torch.Tensor,
             hard_negatives: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Per-sample InfoNCE (B,) against [all batch targets; own prev; own hard negatives].

    predictions, targets, previous: (B, D) unit rows; hard_negatives: (B, H, D) or None.
    Row i scores p_i against every target in the batch (positive on the diagonal), prev_i
    (the last context chunk) and H chunks of the same document. Candidates that are exact
    duplicates of the positive are masked out so the model is never asked to rank a vector
    above itself.
    """
    batch = predictions.shape[0]
    in_batch = predictions @ targets.T                               # (B, B)
    duplicate = (targets @ targets.T) >= DUPLICATE_COSINE
    duplicate.fill_diagonal_(False)
    columns = [in_batch.masked_fill(duplicate, float("-inf"))]
    columns.append(_masked_scores(predictions, previous[:, None], targets))   # (B, 1)
    if hard_negatives is not None and hard_negatives.shape[1] > 0:
        columns.append(_masked_scores(predictions, hard_negatives, targets))  # (B, H)
    logits = torch.cat(columns, dim=1) / temperature                 # (B, B + 1 + H)
    labels = torch.arange(batch, device=predictions.device)
    return F.cross_entropy(logits, labels, reduction="none")


def _masked_scores(predictions, candidates, targets):
    """Scores (B, C) of p_i against its own candidates (B, C, D), duplicates of target_i masked."""
    scores = (predictions[:, None, :] * candidates).sum(-1)
    same = (targets[:, None, :] * candidates).sum(-1) >= DUPLICATE_COSINE
    return scores.masked_fill(same, float("-inf"))


def prev_repel_hinge(cos_next: torch.Tensor, cos_prev: torch.Tensor,
                     margin: float) -> torch.Tensor:
    """Per-sample hinge (B,) = max(0, m - cos(p, next) + cos(p, prev)) from the cosines (B,)."""
    return F.relu(margin - cos_next + cos_prev)


def teacher_pull(cos_next: torch.Tensor, threshold: float) -> torch.Tensor:
    """mean(1 - cos(p, next)) over samples with cos(p, next) < threshold; 0 if none.

    cos_next (B,). A masked mean rather than a boolean index or an `if any`: the same value
    without a device-to-host sync in every training step.
    """
    far = (cos_next < threshold).to(cos_next.dtype)
    return ((1 - cos_next) * far).sum() / far.sum().clamp(min=1)


def p7_loss(predictions: torch.Tensor, contexts: torch.Tensor, targets: torch.Tensor,
            hard_negatives: torch.Tensor | None, epoch: int, config: LossConfig) -> LossParts:
    """The full P7 objective for one batch.

    predictions (B, D) unit; contexts (B, K, D) unit; targets (B, D) unit;
    hard_negatives (B, H, D) or None; epoch: 0-based epoch (teacher while < warmup_epochs).
    """
    previous = contexts[:, -1]
    weights = gate_weights(contexts, targets, config)
    rank = info_nce(predictions, targets, previous, hard_negatives, config.temperature)
    cos_next = (predictions * targets).sum(-1)                       # (B,)
    hinge = prev_repel_hinge(cos_next, (predictions * previous).sum(-1), config.margin)
    weighted = lambda values: (weights * values).mean() / weights.mean()  # noqa: E731
    teacher = (teacher_pull(cos_next, config.teacher_threshold)
               if epoch < config.warmup_epochs else predictions.new_zeros(()))
    total = (weighted(config.weight_rank * rank + config.weight_margin * hinge)
             + config.weight_teacher * teacher)
    return LossParts(total, weighted(rank), weighted(hinge), teacher, weights.mean())
