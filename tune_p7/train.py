"""One P7 training run, without Ray: epochs, optimizer, device, metrics, resumable state.

    result = train(TrainConfig(context=5, epochs=10), load_dataset("default"), on_epoch=cb)

``on_epoch(metrics, state)`` is called after every epoch with that epoch's metrics (the
history columns below) and a state dict that ``train(..., resume_state=state)`` continues
from exactly (model, optimizer, epoch, RNG). The Ray trainable is a thin wrapper around it.

CLI: ``python -m tune_p7.train --data PATH|default|synthetic --context 5 ... --out DIR``
writes DIR/history.parquet, DIR/baselines.json, DIR/config.json and DIR/best.pt.
``--bf16 auto`` (the default) autocasts to bfloat16 only where the device multiplies it
fast (``bf16_is_fast``); what was used is ``bf16_resolved`` in config.json and the history.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from tune_p7 import command
from tune_p7.config import BF16_SETTINGS, TrainConfig
from tune_p7.data import BatchSource, DataError, Dataset, device_table, load_dataset
from tune_p7.devices import resolve_device, uses_bf16
from tune_p7.losses import LossConfig, LossParts, p7_loss
from tune_p7.files import atomic_path, write_json
from tune_p7.metrics import evaluate, reference_metrics
from tune_p7.model import Ranker
from tune_p7.progress import progress_printer

EpochCallback = Callable[[dict, dict], None]
LOSS_COMPONENTS = ("loss", "loss_rank", "loss_margin", "loss_teacher")
FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # device types with torch's fused AdamW (torch >= 2.4)


class TrainingDiverged(RuntimeError):
    """A loss component became NaN or inf; names the epoch and the component."""

    def __init__(self, epoch: int, component: str, value: float):
        self.epoch, self.component, self.value = epoch, component, value
        super().__init__(f"training diverged in epoch {epoch}: {component} became {value}; "
                         f"lower the learning rate or raise the temperature.")

    def __reduce__(self):
        # Ray pickles a trial's exception to the driver; rebuild from the three fields.
        return type(self), (self.epoch, self.component, self.value)


@dataclass
class TrainResult:
    history: list[dict]           # one metrics dict per epoch
    model: Ranker                 # the model after the last epoch
    device: torch.device


class Run:
    """The pieces of one run: device sources, model, optimizer and RNG, built from a config."""

    def __init__(self, config: TrainConfig, dataset: Dataset):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        self.bf16 = uses_bf16(config.bf16, self.device)
        table = device_table(dataset.vectors, self.device)
        train_windows = dataset.windows(config.context, "train")
        self.train_source = BatchSource(train_windows, table)
        # Fixed, evenly spaced evaluation windows: the same in every epoch and every trial.
        self.val_source = BatchSource(dataset.windows(config.context, "val")
                                      .evenly_spaced(config.max_val_windows), table)
        self.train_eval_source = BatchSource(
            train_windows.evenly_spaced(config.train_eval_windows), table)
        torch.manual_seed(config.seed)
        self.model = Ranker(config.model_config(dataset.dim)).to(self.device)
        self.optimizer = _optimizer(self.model, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.loss_config = config.loss_config()
        self.epoch = 0
        self.history: list[dict] = []

    def state(self) -> dict:
        """Everything needed to continue exactly; loadable with torch.load(weights_only=True)."""
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        # Deep copies: the live state dicts alias tensors that the next epoch changes.
        return copy.deepcopy({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "rng": rng, "history": self.history,
            "config": self.config.to_dict()})

    def restore(self, state: dict) -> None:
        """Continue from ``state`` (Run.state); the caller's dict is left as it was (the
        optimizer would otherwise keep its tensors and change them in the next epoch)."""
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    def train_epoch(self) -> dict:
        """One epoch: config.epoch_windows training windows (0: all) in a seeded random order,
        a fresh subset each epoch; sample-weighted loss means.

        Nothing here waits for the device: the loss sums stay on it until the epoch ends.
        """
        config, source = self.config, self.train_source
        self.model.train()
        sums = torch.zeros(len(LOSS_COMPONENTS) + 1, device=self.device)  # + gate weight
        order = torch.randperm(len(source), generator=self.generator)
        order = order[:config.epoch_windows or None]
        # The epoch's hard-negative draws in one call (the same numbers as per-batch calls)
        # and one copy to the device, instead of a copy (and a device sync) per batch.
        draws = torch.rand(len(order), config.hard_negatives, generator=self.generator)
        order, draws = order.to(self.device), draws.to(self.device)
        started = time.perf_counter()
        batches = zip(order.split(config.batch_size), draws.split(config.batch_size))
        for batch, uniform in batches:
            contexts, targets = source.batch(batch)
            negatives = source.hard_negatives(batch, uniform)
            parts = training_step(self.model, self.optimizer, contexts, targets, negatives,
                                  self.epoch, self.loss_config, config.grad_clip, self.bf16)
            values = [value.detach() for _, value in parts.items()] + [parts.gate_weight_mean]
            sums += torch.stack(values) * len(batch)
        means = (sums / len(order)).tolist()  # the epoch's one sync: the clock stops after it
        train_seconds = time.perf_counter() - started
        metrics = {f"train_{name}": value for name, value in zip(LOSS_COMPONENTS, means)}
        self._check_finite(metrics)
        metrics.update(gate_weight_mean=means[-1], train_windows=len(order),
                       sequences_per_second=len(order) / train_seconds,
                       bf16_resolved=self.bf16)
        return metrics

    def _check_finite(self, metrics: dict) -> None:
        for name in ("train_loss_rank", "train_loss_margin", "train_loss_teacher", "train_loss"):
            if not math.isfinite(metrics[name]):
                raise TrainingDiverged(self.epoch + 1, name, metrics[name])

    def evaluate(self) -> dict:
        """Validation metrics (val_*) and the train-split directional metrics (train_*)."""
        self.model.eval()
        options = {"batch_size": self.config.eval_batch_size}
        val = evaluate(self.model, self.val_source,
                       global_queries=self.config.global_queries or None, **options)
        on_train = evaluate(self.model, self.train_eval_source, directional_only=True, **options)
        metrics = {f"val_{name}": value for name, value in val.items()}  # + val_windows
        metrics.update({f"train_{name}": on_train[name]
                        for name in ("margin", "cos_next", "cos_prev")})
        return metrics

    def run_epoch(self) -> dict:
        started = time.perf_counter()
        metrics = self.train_epoch()
        metrics.update(self.evaluate())
        self.epoch += 1
        metrics.update(epoch=self.epoch, anchor_lambda=self.model.anchor_lambda.item(),
                       seconds=time.perf_counter() - started)
        self.history.append(metrics)
        return metrics


def train(config: TrainConfig, dataset: Dataset, on_epoch: EpochCallback | None = None,
          resume_state: dict | None = None) -> TrainResult:
    """Train ``config`` on ``dataset`` for config.epochs epochs (fewer left after a resume).

    on_epoch(metrics, state) runs after every epoch; raise from it to stop early.
    Raises TrainingDiverged on a NaN/inf loss and DataError when the data cannot give
    windows of config.context.
    """
    run = Run(config, dataset)
    if resume_state is not None:
        run.restore(resume_state)
    while run.epoch < config.epochs:
        metrics = run.run_epoch()
        if on_epoch is not None:
            on_epoch(metrics, run.state())
    return TrainResult(run.history, run.model, run.device)


def training_step(model: Ranker, optimizer: torch.optim.Optimizer, contexts: torch.Tensor,
                  targets: torch.Tensor, negatives: torch.Tensor | None, epoch: int,
                  loss_config: LossConfig, grad_clip: float, bf16: bool) -> LossParts:
    """One optimisation step on one batch; returns its loss parts (device tensors, no sync).

    contexts (B, K, D), targets (B, D), negatives (B, H, D) or None: unit rows, float32.
    bf16: autocast the model's forward pass to bfloat16 (the loss stays float32).
    """
    with torch.autocast(contexts.device.type, dtype=torch.bfloat16, enabled=bf16):
        predictions = model(contexts)
    parts = p7_loss(predictions, contexts, targets, negatives, epoch, loss_config)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    model.project_lambda()
    return parts


def _optimizer(model: Ranker, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; lambda is excluded from weight decay, which would pull it towards 0.

    The fused kernel (one pass over each tensor) on CPU and CUDA, which torch has since 2.4
    (our floor), else the multi-tensor one: the same update with a fraction of the memory
    traffic (torch's default per-tensor loop on CPU took a fifth of a step there,
    benchmarks/README.md).
    """
    decayed = [p for name, p in model.named_parameters() if name != "anchor_lambda"]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}]
    if isinstance(model.anchor_lambda, torch.nn.Parameter):
        groups.append({"params": [model.anchor_lambda], "weight_decay": 0.0})
    device = model.anchor_lambda.device.type
    kernel = {"fused": True} if device in FUSED_ADAMW_DEVICES else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.lr, **kernel)


def load_model(path: str | Path, device: str = "cpu") -> Ranker:
    """Rebuild a Ranker from a best.pt written by the CLI (loaded with weights_only=True)."""
    saved = torch.load(path, map_location=device, weights_only=True)
    config = TrainConfig.from_dict(saved["config"])
    model = Ranker(config.model_config(saved["dim"]))
    model.load_state_dict(saved["model"])
    return model.eval()


# ---------------------------------------------------------------------------------------
# CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_p7.train", description="Train one P7 configuration.")
    parser.add_argument("--data", default="default",
                        help="NPZ file, 'default' (shipped dataset) or 'synthetic'")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--val-data", help="a second NPZ of the same D and shape to validate "
                                           "on; every document of --data then trains")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="share of documents held out when the file fixes no split")
    parser.add_argument("--split-seed", type=int, default=0)
    add_config_arguments(parser)
    return parser


BF16_HELP = ("bfloat16 autocast of the forward pass (default: %(default)s). auto = on where "
             "the device multiplies bf16 fast: CUDA compute capability >= 8.0, CPUs with AMX, "
             "AMD CPUs with avx512_bf16; off elsewhere (mps included). The choice is recorded "
             "as bf16_resolved in config.json and in every epoch of the history.")


def add_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None):
    """One --flag per TrainConfig field (booleans as --x/--no-x)."""
    defaults = defaults or TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if field.name == "bf16":
            parser.add_argument(flag, choices=BF16_SETTINGS, default=default, help=BF16_HELP)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    try:
        config = TrainConfig.from_dict(values)
        config.model_config(1)  # validate model settings before loading anything
        # The device that will run, checked now (DeviceError is a ValueError) and recorded
        # in config.json: "auto" becomes what it chose.
        config = dataclasses.replace(config, device=str(resolve_device(config.device)))
        dataset = load_dataset(args.data, args.val_fraction, args.split_seed,
                               val_source=args.val_data,
                               progress=progress_printer(sys.stdout))
        dataset.check_context(config.context)
    except (DataError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bf16 = uses_bf16(config.bf16, resolve_device(config.device))
    write_json(out / "config.json", {**config.to_dict(), "bf16_resolved": bf16,
                                     "data": str(args.data), "val_data": args.val_data,
                                     "val_fraction": args.val_fraction,
                                     "split_seed": args.split_seed})
    print(describe_windows(config, dataset), flush=True)
    _write_baselines(config, dataset, out)
    print(f"device {config.device}" + (" (chosen by --device auto)" if args.device == "auto"
                                       else ""), flush=True)
    best = {"val_margin": -math.inf}

    def on_epoch(metrics: dict, state: dict) -> None:
        print(format_epoch(metrics), flush=True)
        if metrics["val_margin"] > best["val_margin"]:
            best["val_margin"] = metrics["val_margin"]
            with atomic_path(out / "best.pt") as temporary:
                torch.save({"model": state["model"], "config": config.to_dict(),
                            "dim": dataset.dim, "epoch": metrics["epoch"],
                            "val_margin": metrics["val_margin"]}, temporary)
        _write_history(state["history"], out)

    try:
        train(config, dataset, on_epoch)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {out}/history.parquet, baselines.json, config.json, best.pt "
          f"(best val_margin {best['val_margin']:+.4f})")
    return 0


class WindowCounts(NamedTuple):
    """Windows of one config on one dataset: all of each split, and those an epoch trains
    on (epoch_windows) and an evaluation scores (max_val_windows)."""

    trained: int
    per_epoch: int
    validated: int
    evaluated: int


def window_counts(config: TrainConfig, dataset: Dataset) -> WindowCounts:
    """How many windows an epoch of ``config`` trains on and evaluates, of how many."""
    trained, validated = (len(dataset.windows(config.context, split)) for split in ("train", "val"))
    return WindowCounts(trained, min(config.epoch_windows or trained, trained), validated,
                        min(config.max_val_windows or validated, validated))


def describe_windows(config: TrainConfig, dataset: Dataset) -> str:
    """How many windows an epoch trains on and an evaluation scores, of how many."""
    trained, per_epoch, validated, evaluated = window_counts(config, dataset)
    return (f"K={config.context}: {per_epoch:,} of {trained:,} training windows in each "
            f"epoch's seeded random subset, {evaluated:,} of {validated:,} validation windows "
            f"per evaluation (evenly spaced)")


def _write_baselines(config: TrainConfig, dataset: Dataset, out: Path) -> None:
    """baselines.json: trivial predictors on the same validation windows, plus data signals."""
    reference = reference_metrics(dataset, config.context, config.global_queries or None,
                                  config.max_val_windows)
    write_json(out / "baselines.json",
               {**reference["baselines"], "data_signals": reference["signals"]})


def _write_history(history: list[dict], out: Path) -> None:
    import pandas as pd  # the CLI's only use of pandas; train() itself does not need it

    with atomic_path(out / "history.parquet") as temporary:
        pd.DataFrame(history).to_parquet(temporary, index=False)


def format_epoch(metrics: dict, epochs: int | None = None) -> str:
    """One progress line for an epoch's metrics; ``epochs`` adds "of N" to the count."""
    count = f"{metrics['epoch']}/{epochs}" if epochs else f"{metrics['epoch']:>3}"
    return (f"epoch {count}  loss {metrics['train_loss']:.4f}  "
            f"train Δ {metrics['train_margin']:+.4f}  val Δ {metrics['val_margin']:+.4f}  "
            f"cos_next {metrics['val_cos_next']:.4f}  cos_prev {metrics['val_cos_prev']:.4f}  "
            f"R@5 {metrics['val_r_at_5']:.3f}  λ {metrics['anchor_lambda']:.3f}  "
            f"gate {metrics['gate_weight_mean']:.3f}  {metrics['sequences_per_second']:.0f} seq/s")


if __name__ == "__main__":
    command.run(main)
