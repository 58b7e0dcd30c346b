"""One training run: learning, λ, honest train Δ, seeds, resume, divergence, the CLI."""

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from tune_p7.data import BatchSource, device_table, load_dataset
from tune_p7.metrics import copy_last, context_mean, evaluate
from tune_p7.devices import bf16_is_fast, uses_bf16
from tune_p7.train import Run, TrainConfig, TrainingDiverged, load_model, main, train

TINY = dict(d_model=32, layers=2, heads=4, threads=1, eval_batch_size=512)


def test_the_model_learns_the_planted_direction_beyond_trivial_predictors():
    dataset = load_dataset("synthetic")
    config = TrainConfig(epochs=4, lr=2e-3, d_model=64, layers=2, heads=4, threads=1)
    history = train(config, dataset).history
    source = BatchSource(dataset.windows(5, "val"), device_table(dataset.vectors, "cpu"))
    copy_margin = evaluate(copy_last, source)["margin"]
    mean_margin = evaluate(context_mean, source)["margin"]
    final = history[-1]["val_margin"]
    assert final > history[0]["val_margin"] + 0.05
    assert final > copy_margin + 0.08 and final > mean_margin + 0.2
    assert history[-1]["val_cos_next"] > history[0]["val_cos_next"]


def test_lambda_moves_in_training_and_a_fixed_lambda_does_not(small_synthetic):
    learned = train(TrainConfig(epochs=2, **TINY), small_synthetic).history
    assert learned[-1]["anchor_lambda"] != pytest.approx(0.8, abs=1e-4)
    fixed = train(TrainConfig(epochs=2, learn_lambda=False, **TINY), small_synthetic).history
    assert all(row["anchor_lambda"] == pytest.approx(0.8) for row in fixed)


def test_train_margin_is_cos_next_minus_cos_prev_not_the_hinge(small_synthetic):
    config = TrainConfig(epochs=1, train_eval_windows=0, **TINY)
    result = train(config, small_synthetic)
    row = result.history[0]
    source = BatchSource(small_synthetic.windows(5, "train"),
                         device_table(small_synthetic.vectors, "cpu"))
    recomputed = evaluate(result.model.eval(), source, directional_only=True)
    assert row["train_margin"] == pytest.approx(recomputed["margin"], abs=1e-6)
    assert row["train_margin"] == pytest.approx(row["train_cos_next"] - row["train_cos_prev"])
    assert row["train_margin"] != pytest.approx(row["train_loss_margin"], abs=1e-3)


def test_gate_weight_is_not_stuck_at_the_low_weight(small_synthetic):
    row = train(TrainConfig(epochs=1, **TINY), small_synthetic).history[0]
    assert 0.25 < row["gate_weight_mean"] < 1.0


def test_same_seed_same_run_and_resume_continues_exactly(small_synthetic):
    config = TrainConfig(epochs=2, **TINY)
    states, saved = [], []

    def keep(metrics, state):
        states.append(state)
        buffer = io.BytesIO()
        torch.save(state, buffer)  # as a checkpoint file holds it
        saved.append(buffer.getvalue())

    straight = train(config, small_synthetic, on_epoch=keep).history
    again = train(config, small_synthetic).history
    reloaded = train(config, small_synthetic, resume_state=torch.load(
        io.BytesIO(saved[0]), weights_only=True)).history
    resumed = train(config, small_synthetic, resume_state=states[0]).history
    strip = lambda rows: [{k: v for k, v in r.items()  # noqa: E731
                           if k not in ("seconds", "sequences_per_second")} for r in rows]
    assert strip(again) == strip(straight)
    assert strip(reloaded) == strip(straight)
    assert strip(resumed) == strip(straight)
    # The state a run resumed from is left as it was: resuming from it again is exact too.
    again_resumed = train(config, small_synthetic, resume_state=states[0]).history
    assert strip(again_resumed) == strip(straight)


def test_the_optimizer_is_fused_adamw_with_lambda_undecayed_on_cpu(small_synthetic):
    optimizer = Run(TrainConfig(**TINY), small_synthetic).optimizer
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4, 0.0]
    assert optimizer.param_groups[1]["params"][0].shape == ()  # lambda alone


INTEL_AMX = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
INTEL_NO_AMX = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_fp16\n"
AMD_ZEN4 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx512f avx512_bf16\n"
OLD_CPU = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"  # no x86 flags line


@pytest.mark.parametrize("cpuinfo, fast", [
    (INTEL_AMX, True), (AMD_ZEN4, True),
    (INTEL_NO_AMX, False),  # avx512_bf16 without AMX: bf16 matmuls measured slower than fp32
    (OLD_CPU, False), (ARM, False), ("", False),
])
def test_bf16_auto_follows_the_cpu_flags(cpuinfo, fast):
    cpu = torch.device("cpu")
    assert bf16_is_fast(cpu, cpuinfo) is fast
    # Two processors listed: the first one's fields decide (they are all the same).
    assert bf16_is_fast(cpu, cpuinfo + "\n" + OLD_CPU) is fast


def test_bf16_settings_resolve_on_off_and_auto_and_read_old_booleans():
    cpu, mps = torch.device("cpu"), torch.device("mps")
    assert uses_bf16("on", cpu) and not uses_bf16("off", cpu)
    assert uses_bf16("auto", cpu) is bf16_is_fast(cpu)
    assert not bf16_is_fast(mps) and not uses_bf16("auto", mps)
    assert TrainConfig().bf16 == "auto"
    assert TrainConfig(bf16=True).bf16 == "on" and TrainConfig(bf16=False).bf16 == "off"
    assert TrainConfig.from_dict({"bf16": True}).bf16 == "on"
    with pytest.raises(ValueError, match=r"bf16 must be one of auto, on, off \(or a boolean\), "
                                         r"not 'yes'"):
        TrainConfig(bf16="yes")


def test_a_nan_loss_stops_the_run_naming_epoch_and_component(small_synthetic):
    config = TrainConfig(epochs=3, temperature=1e-40, **TINY)
    with pytest.raises(TrainingDiverged, match="epoch 1: train_loss_rank became nan"):
        train(config, small_synthetic)


def test_cli_round_trip_writes_history_baselines_config_and_a_reloadable_best(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["--data", "synthetic", "--out", str(out), "--epochs", "2", "--context", "7",
                 "--d-model", "32", "--layers", "1", "--heads", "2", "--threads", "1",
                 "--bf16", "on"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("epoch ") == 2 and "val Δ" in printed
    history = pd.read_parquet(out / "history.parquet")
    required = ["epoch", "train_loss", "train_loss_rank", "train_loss_margin",
                "train_loss_teacher", "train_margin", "val_cos_next", "val_cos_prev",
                "val_margin", "val_cos_anchor", "val_r_at_1", "val_r_at_5", "val_mrr_at_10",
                "anchor_lambda", "gate_weight_mean", "seconds", "sequences_per_second",
                "bf16_resolved"]
    assert set(required) <= set(history.columns) and list(history["epoch"]) == [1, 2]
    assert history["bf16_resolved"].tolist() == [True, True]
    baselines = json.loads((out / "baselines.json").read_text())
    assert {"copy_last", "context_mean", "orth_mean"} <= set(baselines)
    assert baselines["copy_last"]["val_cos_prev"] == pytest.approx(1.0)
    written = json.loads((out / "config.json").read_text())
    assert written["context"] == 7 and (written["bf16"], written["bf16_resolved"]) == ("on", True)
    saved = torch.load(out / "best.pt", weights_only=True)
    assert saved["val_margin"] == pytest.approx(history["val_margin"].max())
    model = load_model(out / "best.pt")
    contexts = torch.nn.functional.normalize(torch.randn(3, 7, 32), dim=-1)
    assert model(contexts).shape == (3, 32)


def test_bad_settings_exit_2_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--data", "synthetic", "--out", str(out), "--anchor-lambda", "0.95"]) == 2
    assert "outside its learnable range" in capsys.readouterr().err
    assert not out.exists()


def test_cli_bf16_takes_auto_on_off_and_says_what_auto_means(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["--data", "synthetic", "--out", str(tmp_path / "run"), "--bf16", "yes"])
    assert refused.value.code == 2 and "invalid choice: 'yes'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "auto = on where the device multiplies bf16 fast" in help_text
    assert "recorded as bf16_resolved" in help_text


def test_divergence_survives_pickling_as_ray_sends_it():
    import pickle

    error = pickle.loads(pickle.dumps(TrainingDiverged(2, "train_loss", float("nan"))))
    assert (error.epoch, error.component) == (2, "train_loss") and "epoch 2" in str(error)


class RecordingSource:
    """The run's own BatchSource, remembering which windows each batch asked for."""

    def __init__(self, source):
        self.source, self.asked = source, []

    def __getattr__(self, name):
        return getattr(self.source, name)

    def __len__(self):
        return len(self.source)

    def batch(self, positions):
        self.asked.append(positions.clone())
        return self.source.batch(positions)


def test_an_epoch_of_n_windows_is_a_fresh_seeded_subset_each_epoch(small_synthetic):
    from tune_p7.train import Run

    config = TrainConfig(epochs=2, epoch_windows=100, **TINY)
    seen = []
    for _ in range(2):  # two runs of one seed see the same subsets
        run = Run(config, small_synthetic)
        run.train_source = RecordingSource(run.train_source)
        epochs = []
        for _ in range(config.epochs):
            run.asked = run.train_source.asked = []
            metrics = run.run_epoch()
            epochs.append(torch.cat(run.train_source.asked))
            assert metrics["train_windows"] == 100
        seen.append(epochs)
    first, second = seen[0]
    assert len(first) == len(set(first.tolist())) == 100  # no window twice in an epoch
    assert set(first.tolist()) != set(second.tolist())   # a new subset each epoch
    for epoch in range(2):
        assert torch.equal(seen[0][epoch], seen[1][epoch])
    whole = train(TrainConfig(epochs=1, **TINY), small_synthetic).history[0]
    assert whole["train_windows"] == len(small_synthetic.windows(5, "train"))


def test_a_validation_cap_scores_the_same_evenly_spaced_windows_and_records_the_count(
        small_synthetic):
    config = TrainConfig(epochs=2, max_val_windows=50, **TINY)
    result = train(config, small_synthetic)
    assert [row["val_windows"] for row in result.history] == [50, 50]
    windows = small_synthetic.windows(5, "val").evenly_spaced(50)
    source = BatchSource(windows, device_table(small_synthetic.vectors, "cpu"))
    again = evaluate(result.model.eval(), source, global_queries=config.global_queries)
    assert result.history[-1]["val_margin"] == pytest.approx(again["margin"], abs=1e-6)
    assert result.history[-1]["val_r_at_5"] == pytest.approx(again["r_at_5"])


def test_evaluation_runs_with_dropout_off(small_synthetic):
    from tune_p7.train import Run

    run = Run(TrainConfig(epochs=1, dropout=0.5, **TINY), small_synthetic)
    run.model.train()  # as after a training epoch
    assert run.evaluate() == run.evaluate()


def test_cli_validates_on_a_second_file_and_records_it(tmp_path, capsys):
    from tune_p7.data import make_synthetic

    for name, seed in (("train", 1), ("val", 2)):
        vectors, offsets = make_synthetic(num_docs=30, dim=16, seed=seed)
        np.savez(tmp_path / f"{name}.npz", vectors=vectors, offsets=offsets)
    out = tmp_path / "run"
    code = main(["--data", str(tmp_path / "train.npz"), "--val-data", str(tmp_path / "val.npz"),
                 "--epochs", "1", "--d-model", "16", "--layers", "1", "--heads", "2",
                 "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["val_data"] == str(tmp_path / "val.npz")
    history = pd.read_parquet(out / "history.parquet")
    dataset = load_dataset(tmp_path / "val.npz")
    every_val_window = sum(len(dataset.windows(5, split)) for split in ("train", "val"))
    assert history["val_windows"].iloc[0] == every_val_window
    assert "validation windows per evaluation" in capsys.readouterr().out
