"""The settings of one P7 run: TrainConfig, and the model and loss parts cut from it.

    config = TrainConfig(context=7, margin=0.1)      # every field has the original's default
    config.model_config(dim=768)                     # -> ModelConfig for tune_p7.model.Ranker
    config.loss_config()                             # -> LossConfig for tune_p7.losses.p7_loss

TrainConfig is flat, so a search space can set any field by name; it is what a trial's
config holds (plus the labels phase and cell). Plain dataclasses: importing this module
loads neither torch nor Ray, so readers of a sweep folder can use the field names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BF16_SETTINGS = ("auto", "on", "off")  # TrainConfig.bf16


@dataclass
class TrainConfig:
    """Everything one run needs; flat, so a sweep can search any field by name."""

    # data
    context: int = 5              # K, context chunks per window
    # model (see ModelConfig below)
    architecture: str = "transformer"  # "transformer" or "lstm"
    d_model: int = 512
    layers: int = 4
    heads: int = 8
    dropout: float = 0.1
    anchor_lambda: float = 0.8    # initial lambda of p = normalize(l*q + (1-l)*anchor)
    learn_lambda: bool = True     # False: lambda stays fixed at anchor_lambda
    lambda_min: float = 0.6
    lambda_max: float = 0.9
    # loss (see LossConfig below)
    temperature: float = 0.07
    margin: float = 0.07
    hard_negatives: int = 4       # H same-document negatives per window
    gate_threshold: float = 0.03
    gate_low_weight: float = 0.25
    teacher_threshold: float = 0.20
    weight_rank: float = 1.0
    weight_margin: float = 1.0
    weight_teacher: float = 0.2
    warmup_epochs: int = 2
    # optimisation
    epochs: int = 10
    epoch_windows: int = 0        # training windows per epoch: a seeded random subset (0: all)
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    # execution
    device: str = "auto"          # "auto" = cuda > mps > cpu, or a torch device string
    threads: int = 0              # torch CPU threads; 0 keeps torch's default
    bf16: str = "auto"            # bf16 autocast of the forward pass: "auto" (where the device
                                  # multiplies bf16 fast, see devices.bf16_is_fast), "on", "off"
    eval_batch_size: int = 1024
    train_eval_windows: int = 4096  # train-split margin measured on this many windows (0: all)
    max_val_windows: int = 20000  # validation windows per evaluation, evenly spaced (0: all)
    global_queries: int = 4096    # global retrieval queries per evaluation (0: all windows)

    def __post_init__(self):
        positive = ("context", "d_model", "layers", "epochs", "batch_size", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        counts = ("epoch_windows", "max_val_windows", "train_eval_windows", "global_queries")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (all) or a positive count, "
                                 f"not {getattr(self, name)}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}.")
        if not 0 <= self.anchor_lambda <= 1:
            raise ValueError(f"anchor_lambda must lie in [0, 1], not {self.anchor_lambda}.")
        self.bf16 = bf16_setting(self.bf16)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a flat dict; unknown keys are an error (a typo must not pass silently)."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}.")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def model_config(self, dim: int) -> ModelConfig:
        names = {field.name for field in dataclasses.fields(ModelConfig)} - {"dim"}
        return ModelConfig(dim=dim, **{name: getattr(self, name) for name in names})

    def loss_config(self) -> LossConfig:
        names = {field.name for field in dataclasses.fields(LossConfig)}
        return LossConfig(**{name: getattr(self, name) for name in names})


def bf16_setting(value) -> str:
    """"auto" | "on" | "off" from a setting; booleans of older configs read True -> "on"."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in BF16_SETTINGS:
        raise ValueError(f"bf16 must be one of {', '.join(BF16_SETTINGS)} (or a boolean), "
                         f"not {value!r}.")
    return value


@dataclass
class ModelConfig:
    dim: int = 768                # D, the embedding dimension of the data
    context: int = 5              # K, context chunks per window (size of the position table)
    architecture: str = "transformer"  # "transformer" or "lstm"
    d_model: int = 512            # width of the encoder
    layers: int = 4               # encoder layers
    heads: int = 8                # attention heads (transformer only)
    dropout: float = 0.1
    anchor_lambda: float = 0.8    # initial (or fixed) weight of the model's own prediction q
    learn_lambda: bool = True     # False keeps lambda fixed at anchor_lambda
    lambda_min: float = 0.6       # learnable lambda stays inside [lambda_min, lambda_max]
    lambda_max: float = 0.9

    def __post_init__(self):
        if self.architecture not in ("transformer", "lstm"):
            raise ValueError(f"architecture must be 'transformer' or 'lstm', "
                             f"not {self.architecture!r}.")
        if self.learn_lambda and not self.lambda_min <= self.anchor_lambda <= self.lambda_max:
            raise ValueError(f"anchor_lambda {self.anchor_lambda} lies outside its learnable "
                             f"range [{self.lambda_min}, {self.lambda_max}]; widen the range "
                             f"or fix lambda.")
        if self.architecture == "transformer" and self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by heads {self.heads}.")


@dataclass
class LossConfig:
    temperature: float = 0.07     # InfoNCE softmax temperature
    margin: float = 0.07          # prev-repel hinge margin m
    gate_threshold: float = 0.03  # forward signal f_i >= this gets full weight
    gate_low_weight: float = 0.25  # weight of windows below the threshold
    teacher_threshold: float = 0.20  # teacher pulls samples with cos(p, next) below this
    weight_rank: float = 1.0      # w_rank
    weight_margin: float = 1.0    # w_margin
    weight_teacher: float = 0.2   # w_teacher
    warmup_epochs: int = 2        # teacher pull active while epoch < warmup_epochs (0-based)
