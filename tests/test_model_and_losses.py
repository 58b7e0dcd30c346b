"""The ranker and the losses, checked against plain per-sample references.

Each test pins one of the original scripts' mistakes (DESIGN.md) so it stays fixed.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tune_p7.losses import LossConfig, gate_weights, info_nce, p7_loss, teacher_pull
from tune_p7.model import ModelConfig, Ranker
from tune_p7.devices import resolve_device


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_loss(p, contexts, targets, negatives, epoch, config: LossConfig):
    """The P7 objective written one sample at a time with Python floats."""
    batch = len(p)
    cos = lambda a, b: float(a @ b)  # noqa: E731
    weights, ranks, hinges = [], [], []
    for i in range(batch):
        last, before = contexts[i, -1], contexts[i, -2]
        forward = cos(last, targets[i]) - cos(last, before)
        weights.append(1.0 if forward >= config.gate_threshold else config.gate_low_weight)
        candidates = [targets[j] for j in range(batch)] + [last] + list(negatives[i])
        logits = []
        for j, candidate in enumerate(candidates):
            duplicate = j != i and cos(candidate, targets[i]) >= 1 - 1e-6
            logits.append(-math.inf if duplicate else cos(p[i], candidate) / config.temperature)
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(x - top) for x in logits))
        ranks.append(log_sum - logits[i])
        hinges.append(max(0.0, config.margin - cos(p[i], targets[i]) + cos(p[i], last)))
    mean_weight = sum(weights) / batch
    weighted = sum(w * (config.weight_rank * r + config.weight_margin * h)
                   for w, r, h in zip(weights, ranks, hinges)) / batch / mean_weight
    far = [1 - cos(p[i], targets[i]) for i in range(batch)
           if cos(p[i], targets[i]) < config.teacher_threshold]
    teacher = sum(far) / len(far) if far and epoch < config.warmup_epochs else 0.0
    return weighted + config.weight_teacher * teacher


@pytest.mark.parametrize("epoch", [0, 3])
def test_loss_equals_a_per_sample_reference(epoch):
    config = LossConfig(temperature=0.1, margin=0.09)
    contexts, targets = unit(6, 4, 8, seed=1), unit(6, 8, seed=2)
    negatives, predictions = unit(6, 3, 8, seed=3), unit(6, 8, seed=4)
    targets[4] = targets[1]               # a duplicate positive in the batch
    negatives[2, 0] = targets[2]          # a hard negative equal to its own positive
    contexts[0, -1] = targets[0] * 0.9 + contexts[0, -2] * 0.1  # a strongly forward window
    contexts = F.normalize(contexts, dim=-1)
    got = p7_loss(predictions, contexts, targets, negatives, epoch, config).total.item()
    want = reference_loss(predictions, contexts, targets, negatives, epoch, config)
    assert got == pytest.approx(want, rel=1e-5)


def test_gate_weights_are_per_sample_from_the_forward_signal():
    config = LossConfig()
    last = unit(1, 8, seed=5)[0]
    towards = F.normalize(last + 0.5 * unit(1, 8, seed=6)[0], dim=0)
    # Window 0: next is c_t itself (f = 1 - cos(c_t, c_{t-1}) > 0); window 1: next far away.
    contexts = torch.stack([torch.stack([towards, last]), torch.stack([last, last])])
    targets = torch.stack([last, -last])
    weights = gate_weights(contexts, targets, config)
    assert weights.tolist() == [1.0, 0.25]


def test_teacher_pull_is_the_mean_over_far_samples_and_zero_when_none_is_far():
    cos_next = torch.tensor([0.1, 0.5, -0.3, 0.9], requires_grad=True)
    pulled = teacher_pull(cos_next, threshold=0.2)
    assert pulled.item() == pytest.approx(((1 - 0.1) + (1 + 0.3)) / 2)
    pulled.backward()
    assert cos_next.grad.tolist() == [-0.5, 0.0, -0.5, 0.0]  # only the far ones are pulled
    near = teacher_pull(torch.tensor([0.5, 0.9], requires_grad=True), threshold=0.2)
    assert near.item() == 0.0 and near.requires_grad


def test_infonce_never_builds_a_batch_by_batch_by_dim_tensor_nor_calls_bmm():
    batch, dim, hard = 256, 64, 4

    class Watch(TorchDispatchMode):
        largest, ops = 0, set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            Watch.ops.add(str(func))
            if isinstance(out, torch.Tensor):
                Watch.largest = max(Watch.largest, out.numel())
            return out

    predictions = unit(batch, dim, seed=7).requires_grad_()
    with Watch():
        info_nce(predictions, unit(batch, dim, seed=8), unit(batch, dim, seed=9),
                 unit(batch, hard, dim, seed=10), 0.07).mean().backward()
    # Largest tensors allowed: the (B, H, D) hard negatives or the (B, B + 1 + H) logits.
    assert Watch.largest <= max(batch * hard * dim, batch * (batch + 1 + hard))
    assert Watch.largest < batch * batch * dim / 10
    assert not any("bmm" in op for op in Watch.ops)


def small_model(**overrides):
    settings = dict(dim=16, context=5, d_model=32, layers=2, heads=4, dropout=0.0)
    return Ranker(ModelConfig(**{**settings, **overrides}))


def test_output_is_unit_norm_and_depends_on_context_order():
    torch.manual_seed(0)
    model = small_model().eval()
    contexts = unit(4, 5, 16, seed=11)
    predictions = model(contexts)
    assert torch.allclose(predictions.norm(dim=-1), torch.ones(4), atol=1e-5)
    shuffled = model(contexts[:, torch.tensor([3, 0, 4, 1, 2])])
    # The mean-context anchor is order-free; only learned positions can make this differ.
    assert (predictions - shuffled).abs().max() > 1e-3
    assert model.positions.requires_grad and model.positions.abs().sum() > 0


@pytest.mark.parametrize("architecture", ["transformer", "lstm"])
def test_lambda_gets_a_gradient_and_stays_inside_its_range(architecture):
    torch.manual_seed(0)
    model = small_model(architecture=architecture, anchor_lambda=0.6)
    contexts, targets = unit(8, 5, 16, seed=12), unit(8, 16, seed=13)
    p7_loss(model(contexts), contexts, targets, None, 0, LossConfig()).total.backward()
    assert model.anchor_lambda.grad is not None and model.anchor_lambda.grad.abs() > 0
    with torch.no_grad():
        model.anchor_lambda.fill_(0.2)
    model.project_lambda()
    assert model.anchor_lambda.item() == pytest.approx(0.6)


def test_fixed_lambda_is_a_buffer_that_never_moves():
    model = small_model(learn_lambda=False, anchor_lambda=0.5)
    assert "anchor_lambda" not in dict(model.named_parameters())
    assert model.anchor_lambda.item() == 0.5


def test_last_position_shortcut_matches_running_the_full_sequence():
    torch.manual_seed(0)
    model = small_model().eval()
    contexts = unit(3, 5, 16, seed=14)
    x = model.input(contexts) + model.positions
    for block in model.blocks:
        x = block(x)  # every position through every layer, as the original did
    full = model.head(model.final_norm(x[:, -1]))
    assert torch.allclose(model.head(model.encode(contexts)), full, atol=1e-5)


def test_lambda_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="outside its learnable range"):
        ModelConfig(anchor_lambda=0.95)


def test_device_auto_picks_what_exists_and_an_override_wins():
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
