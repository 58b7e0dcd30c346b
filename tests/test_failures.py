"""When something goes wrong: refused up front in one sentence, or survived.

A device torch cannot use, a trial that fits no node and a sweep folder in use are refused
with one sentence and exit code 2 before any trial starts; a sweep whose trials all fail
still ends with its tables and says why (exit 1); a trial worker killed mid-epoch resumes
from its last epoch checkpoint exactly. Real Ray, real files, tiny data.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
import yaml

from conftest import TINY_SPACE, epochs_across_a_lost_worker, reported, run_sweep, \
    start_sweep, sweep_command, wait_for_line, without_timings, write_chunk_file
from tune_p7 import analyze, confirm, sweep, train
from tune_p7.data import load_dataset
from tune_p7.folder import FolderInUse, SweepFolder, read_params, read_results
from tune_p7.resources import GIB, shortfall
from tune_p7.train import TrainConfig

CPU_TORCH = pytest.mark.skipif(torch.version.cuda is not None or torch.backends.mps.is_built(),
                               reason="the messages of a torch built for CPUs only")
NO_CUDA = (f"this torch ({torch.__version__}) is built without CUDA; use --device cpu or "
           f"auto, or install a CUDA build of torch.")
NO_MPS = ("MPS is not available here (it needs a Mac with Apple silicon and a torch built "
          "for it); use --device cpu or auto.")


# ---------------------------------------------------------------------------------------
# Refused up front: devices, resources


@CPU_TORCH
@pytest.mark.parametrize("device, message", [
    ("cuda", f"--device cuda: {NO_CUDA}"),
    ("cuda:3", f"--device cuda:3: {NO_CUDA}"),
    ("mps", f"--device mps: {NO_MPS}"),
    ("foo", "--device 'foo' is not a device; use auto, cpu, cuda, cuda:N or mps."),
])
def test_train_refuses_a_device_torch_cannot_use_in_one_sentence(device, message, tmp_path,
                                                                 capsys):
    out = tmp_path / "run"
    assert train.main(["--data", "synthetic", "--out", str(out), "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n" and captured.out == ""
    assert not out.exists()


@CPU_TORCH
def test_sweep_and_confirm_refuse_the_device_before_ray_starts(tiny_data, tmp_path, capsys):
    import ray

    common = ["--device", "cuda", "--gpus-per-trial", "1"]
    assert sweep.main(["--space", str(TINY_SPACE), "--data", str(tiny_data), "--storage-path",
                       str(tmp_path), "--name", "gpu", *common]) == 2
    assert capsys.readouterr().err == f"error: --device cuda: {NO_CUDA}\n"
    assert confirm.main([str(tmp_path / "gpu"), "--device", "mps"]) == 2
    assert capsys.readouterr().err == f"error: --device mps: {NO_MPS}\n"
    assert not ray.is_initialized() and not (tmp_path / "gpu").exists()


def test_a_negative_retry_count_is_refused_in_one_sentence(tiny_data, tmp_path, capsys):
    import ray

    assert sweep.main(["--space", str(TINY_SPACE), "--data", str(tiny_data), "--storage-path",
                       str(tmp_path), "--name", "retries", "--max-failures", "-1"]) == 2
    assert capsys.readouterr().err == "error: --max-failures -1 must be 0 (no retry) or more.\n"
    assert not ray.is_initialized() and not (tmp_path / "retries").exists()


def test_a_missing_or_non_npz_data_file_is_refused_before_ray_starts(tiny_data, tmp_path,
                                                                       capsys, monkeypatch):
    def start_ray(*args):
        raise AssertionError("Ray was started for a sweep whose data file is unusable")

    monkeypatch.setattr(sweep, "start_ray", start_ray)
    missing, text = tmp_path / "missing.npz", tmp_path / "vectors.txt"
    text.write_text("0.1 0.2\n")
    common = ["--space", str(TINY_SPACE), "--storage-path", str(tmp_path), "--name", "bad"]
    assert sweep.main([*common, "--data", str(missing)]) == 2
    assert capsys.readouterr().err == (f"error: {missing}: file not found; pass an existing "
                                       f".npz file, 'default' or 'synthetic' to --data.\n")
    assert sweep.main([*common, "--data", str(tiny_data), "--val-data", str(text)]) == 2
    assert capsys.readouterr().err == (f"error: {text}: not an NPZ archive; save the arrays "
                                       f"with numpy.savez (a single .npy or text file is not "
                                       f"enough).\n")
    assert not (tmp_path / "bad").exists()


def test_auto_device_is_shown_in_the_plan(tiny_data, tmp_path, capsys):
    chosen = "mps" if torch.backends.mps.is_available() else "cpu"
    assert sweep.main(["--space", str(TINY_SPACE), "--data", str(tiny_data), "--storage-path",
                       str(tmp_path), "--name", "auto", "--dry-run"]) == 0
    assert f"device {chosen} (chosen by --device auto)" in capsys.readouterr().out
    assert sweep.main(["--space", str(TINY_SPACE), "--data", str(tiny_data), "--storage-path",
                       str(tmp_path), "--name", "auto", "--dry-run", "--gpus-per-trial",
                       "0.5"]) == 0
    assert "device cuda (chosen by --device auto)" in capsys.readouterr().out


def test_train_records_the_device_auto_chose(tmp_path, capsys):
    chosen = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    out = tmp_path / "run"
    assert train.main(["--data", "synthetic", "--out", str(out), "--epochs", "1", "--d-model",
                       "16", "--layers", "1", "--heads", "2", "--threads", "1"]) == 0
    assert f"device {chosen} (chosen by --device auto)\n" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["device"] == chosen


def test_a_trial_that_fits_no_node_is_refused_naming_flag_ask_and_supply(tiny_data, tmp_path):
    done = run_sweep(sweep_command(tiny_data, tmp_path, "big", "--cpus-per-trial", "999",
                                   "--gpus-per-trial", "0.5"), timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    match = re.fullmatch(
        r"error: --cpus-per-trial 999 asks for 999 CPUs per trial, but this machine has "
        r"(\d+) and --gpus-per-trial 0.5 asks for 0.5 GPUs per trial, but this machine has 0; "
        r"lower --cpus-per-trial to at most (\d+) and --gpus-per-trial to at most 0.",
        errors[0])
    assert match and match.group(1) == match.group(2), errors[0]
    assert not (tmp_path / "big").exists()  # nothing written for a refused sweep


def test_shortfall_names_what_no_single_node_has():
    nodes = [{"CPU": 8, "memory": 16 * GIB}, {"CPU": 2, "GPU": 1, "memory": 4 * GIB}]
    assert shortfall({"CPU": 2, "GPU": 1}, nodes) is None
    assert shortfall({"CPU": 1, "memory": 32 * GIB}, nodes) == (
        "--memory-per-trial 32 asks for 32 GiB of memory per trial, but the largest node has "
        "16", "lower --memory-per-trial to at most 16")
    assert shortfall({"CPU": 4, "GPU": 1}, nodes) == (
        "no single node has 4 CPUs, 1 GPUs at once (nodes: 8 CPUs, 0 GPUs; 2 CPUs, 1 GPUs)",
        "lower --cpus-per-trial or --gpus-per-trial until one node holds a whole trial")


# ---------------------------------------------------------------------------------------
# One live sweep per folder


LOCK_HOLDER = """
import sys, time
from tune_p7.folder import SweepFolder
lock = SweepFolder(sys.argv[1]).lock()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_held_folder_is_refused_and_a_killed_holders_lock_is_gone(tmp_path):
    folder = SweepFolder(tmp_path / "held")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(folder.path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(FolderInUse) as refused:
            folder.lock()
        assert str(refused.value) == (
            f"{folder.path} is in use by a running sweep (pid {holder.pid} on host "
            f"{socket.gethostname()}); wait for it to end or stop it, then resume, or pick "
            f"another --name.")
    finally:
        holder.kill()  # SIGKILL: the holder cannot release anything itself
        holder.wait(timeout=10)
    with folder.lock():  # the kernel released the dead holder's lock
        assert json.loads((folder.path / "sweep.lock").read_text())["pid"] == os.getpid()


# ---------------------------------------------------------------------------------------
# A sweep in which a second sweep is refused and a trial worker is killed


EPOCHS = 5


def running_trial(experiment_dir, epochs_left: int) -> tuple[str, int] | None:
    """(trial folder name, worker pid) of a trial with a reported epoch and at least
    ``epochs_left`` epochs to go, or None."""
    for result in sorted(experiment_dir.glob("*/result.json")):
        lines = reported(result)
        if lines and lines[-1]["epoch"] <= EPOCHS - epochs_left:
            return result.parent.name, lines[-1]["pid"]
    return None


@pytest.fixture(scope="module")
def disturbed_sweep(tmp_path_factory):
    """A sweep of the four cells one at a time (5 epochs, 200 documents: about a second per
    epoch) during which two more sweeps of the same name (one with --resume) are started
    and one trial's worker is SIGKILLed mid-trial. Returns what each process did."""
    root = tmp_path_factory.mktemp("disturbed")
    data = write_chunk_file(root / "data.npz", num_docs=200)
    command = sweep_command(data, root, "busy", "--epochs", str(EPOCHS), "--num-samples", "0",
                            "--max-concurrent", "1")
    first = start_sweep(command)
    wait_for_line(first, " epoch 1/")
    seconds = [subprocess.Popen(again, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for again in (command, command + ["--resume"])]
    experiment = root / "busy" / "ray" / "sweep"
    deadline, target = time.time() + 60, None
    while target is None and time.time() < deadline and first.poll() is None:
        target = running_trial(experiment, epochs_left=2)
        time.sleep(0.05)
    assert target is not None, "no trial was mid-run to kill"
    os.kill(target[1], signal.SIGKILL)
    refusals = [(*second.communicate(timeout=90), second.returncode) for second in seconds]
    output = first.communicate(timeout=240)[0]
    return {"folder": root / "busy", "data": data, "first": first, "output": output,
            "refusals": refusals, "killed": target}


def test_a_second_sweep_on_a_running_folder_is_refused_naming_pid_and_host(disturbed_sweep):
    folder, pid = disturbed_sweep["folder"], disturbed_sweep["first"].pid
    for out, err, code in disturbed_sweep["refusals"]:
        assert code == 2 and out == ""
        assert err == (
            f"error: {folder} is in use by a running sweep (pid {pid} on host "
            f"{socket.gethostname()}); wait for it to end or stop it, then resume, or pick "
            f"another --name.\n")


def test_the_first_sweep_finishes_untouched(disturbed_sweep):
    folder = disturbed_sweep["folder"]
    assert disturbed_sweep["first"].returncode == 0, disturbed_sweep["output"][-3000:]
    recorded = json.loads((folder / "sweep.json").read_text())
    assert recorded["state"] == "finished" and recorded["pid"] == disturbed_sweep["first"].pid
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials.cell) == ["baseline", "higher_margin", "larger_context",
                                   "strong_anchor"]
    assert (trials.status == "complete").all() and (trials.epochs_run == EPOCHS).all()
    # Only the first sweep ran Ray in the folder: one session's state per experiment.
    assert len(list((folder / "ray" / "sweep").glob("experiment_state-*.json"))) == 1


def test_auto_device_is_recorded_in_the_plan_and_every_trial_config(disturbed_sweep):
    chosen = "mps" if torch.backends.mps.is_available() else "cpu"
    folder = SweepFolder(disturbed_sweep["folder"])
    plan = folder.read_plan()
    assert plan.fixed["device"] == chosen and {cell["device"] for cell in plan.cells} == {chosen}
    assert {read_params(trial)["device"] for _, trial in folder.trial_dirs()} == {chosen}


def test_a_killed_worker_resumes_from_its_last_epoch_exactly(disturbed_sweep):
    trial_name, killed_pid = disturbed_sweep["killed"]
    trial_dir = disturbed_sweep["folder"] / "ray" / "sweep" / trial_name
    # Continued from its last checkpoint to the last epoch (conftest: at most the epoch whose
    # checkpoint Ray was registering runs again, to the same figures).
    after = epochs_across_a_lost_worker(trial_dir / "result.json", killed_pid)
    assert after[-1] == EPOCHS
    error = (trial_dir / "error.txt").read_text()  # Ray's record of the failed attempt
    assert "The actor died unexpectedly" in error and f"pid: {killed_pid}" in error
    # The same history as one uninterrupted run of the same config on the same data.
    params = read_params(trial_dir)
    config = TrainConfig.from_dict({k: v for k, v in params.items() if k not in ("phase", "cell")})
    straight = train.train(config, load_dataset(str(disturbed_sweep["data"]), split_seed=0))
    resumed = read_results(trial_dir / "result.json").epochs
    assert without_timings(resumed) == without_timings(straight.history)


# ---------------------------------------------------------------------------------------
# Every trial fails


def test_a_sweep_whose_trials_all_fail_ends_with_tables_and_the_reasons(tiny_data, tmp_path,
                                                                       capsys):
    space = yaml.safe_load(TINY_SPACE.read_text())
    space["fixed"]["lr"] = 1.0e30  # every trial's loss is NaN in its first epoch
    space["cells"] = {name: space["cells"][name] for name in ("baseline", "larger_context")}
    space_file = tmp_path / "failing.yaml"
    space_file.write_text(yaml.safe_dump(space))
    done = run_sweep(sweep_command(tiny_data, tmp_path, "failing", "--epochs", "2",
                                   "--num-samples", "0", "--max-failures", "0",
                                   space=space_file), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "0 retries of a failed trial" in done.stdout
    folder = tmp_path / "failing"
    # --max-failures 0: one attempt each (Ray numbers every failure it records).
    errors = sorted((folder / "ray" / "sweep").glob("*/error.txt"))
    assert len(errors) == 2 and all(path.read_text().count("Failure # ") == 1
                                    for path in errors)
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials.cell) == ["baseline", "larger_context"]
    assert (trials.status == "error").all() and "2 error" in done.stdout  # summary's counts
    reason = ("tune_p7.train.TrainingDiverged: training diverged in epoch 1: train_loss_rank "
              "became nan; lower the learning rate or raise the temperature.")
    report = ("every trial failed (2 of 2), so there is nothing to rank; fix the cause below "
              "and start a new sweep (--resume does not re-run failed trials):\n"
              f"  baseline/baseline: {reason}\n  baseline/larger_context: {reason}\n")
    assert f"error: {report}" in done.stderr
    assert (folder / "summary.txt").read_text() == report
    assert analyze.main([str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: {report}" and captured.out == ""
