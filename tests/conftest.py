"""Shared fixtures: small real datasets written to real files; the sweep as a subprocess."""

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tune_p7.data import chunk_dataset, make_synthetic
from tune_p7.folder import (RAY_FIELDS, newest_trial_data, read_params, read_results,
                             resume_checkpoint)


# The files that run the longest real sweeps (about 1.5-3 min each under -n 2), first: with
# --dist loadfile, xdist hands files out in collection order (alphabetical otherwise), and a
# run that starts one of these last ends with one process working alone. Order only.
LONGEST_FILES = ("test_sweep.py", "test_tracking.py", "test_failures.py", "test_submit.py")


def pytest_collection_modifyitems(items):
    """Put the tests of LONGEST_FILES first, each file's tests in their own order."""
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
    items.sort(key=rank)  # a stable sort: every other order is kept


@pytest.fixture(scope="session")
def small_synthetic():
    """A small chunk-level synthetic Dataset (80 documents, 16-d) split 80/20 by document."""
    vectors, offsets = make_synthetic(num_docs=80, dim=16, seed=1)
    return chunk_dataset(vectors, offsets, name="small-synthetic")


@pytest.fixture
def chunk_file(tmp_path):
    """Write a chunk-level NPZ from (vectors, doc_ids or offsets) keyword arrays; returns path."""
    def write(name="data.npz", **arrays):
        path = tmp_path / name
        np.savez(path, **arrays)
        return path
    return write


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A chunk-level NPZ of 40 short synthetic documents (16-d, ~630 chunks) for tiny sweeps."""
    vectors, offsets = make_synthetic(num_docs=40, dim=16, min_chunks=12, max_chunks=20, seed=3)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, vectors=vectors, offsets=offsets)
    return path


TINY_SPACE = Path(__file__).parent / "sweep" / "tiny.yaml"  # 16-wide model: seconds per trial


def write_tiny_space(path: Path, epochs: int = 3, optuna_trials: int = 3,
                     reduction_factor: int = 3, startup_trials: int = 2,
                     extra_cells: dict | None = None) -> Path:
    """tests/sweep/tiny.yaml with a test's own budget and extra cells, written to ``path``."""
    space = yaml.safe_load(TINY_SPACE.read_text())
    for profile in space["profiles"].values():
        profile["train"]["epochs"] = epochs
        profile["optuna_trials"] = optuna_trials
        profile["asha"]["reduction_factor"] = reduction_factor
    space["optuna"]["startup_trials"] = startup_trials
    space["cells"].update(extra_cells or {})
    path.write_text(yaml.safe_dump(space))
    return path


def write_chunk_file(path: Path, num_docs: int, seed: int = 3) -> Path:
    """A chunk-level NPZ of ``num_docs`` short synthetic documents (16-d, 12-20 chunks each)."""
    vectors, offsets = make_synthetic(num_docs=num_docs, dim=16, min_chunks=12, max_chunks=20,
                                      seed=seed)
    np.savez(path, vectors=vectors, offsets=offsets)
    return path


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory) -> dict:
    """One tiny real sweep run to its end, shared by the tests that read a finished sweep
    (test_sweep's smoke test, test_analyze, test_confirm): the four cells and a fifth,
    ``diverges``, whose teacher weight makes its loss overflow; 4 TPE trials under ASHA (rung
    at epoch 2, reduction factor 2); 60 documents; 2 trials at once. Returns its inputs
    (space, data, storage), its folder and the finished command (stdout, stderr, exit code).

    The processes of pytest-xdist share it: the first to ask runs it in the run's common
    temporary folder while holding a lock the others wait on, and records the command's
    result there for them (done.json), a failed one too: it runs once either way."""
    root = shared_temp(tmp_path_factory) / "finished-sweep"
    root.mkdir(exist_ok=True)
    inputs, storage, record = root / "inputs", root / "results", root / "done.json"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.exists():
            run_finished_sweep(inputs, storage, record)
    done = subprocess.CompletedProcess(**json.loads(record.read_text()))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"space": inputs / "space.yaml", "data": inputs / "data.npz", "storage": storage,
            "dir": storage / "tiny", "done": done}


def shared_temp(tmp_path_factory) -> Path:
    """The temporary folder of this pytest run that all its xdist processes share (each has
    its own below it); without xdist, the run's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def run_finished_sweep(inputs: Path, storage: Path, record: Path) -> None:
    """Run finished_sweep's sweep with its inputs written to ``inputs`` and its folder under
    ``storage``; write the finished command's result (args, exit code, output) to ``record``."""
    inputs.mkdir()
    space = write_tiny_space(inputs / "space.yaml", optuna_trials=4, reduction_factor=2,
                             extra_cells={"diverges": {"context": 5, "margin": 0.07,
                                                       "anchor_lambda": 0.8,
                                                       "weight_teacher": 1.0e+40}})
    vectors, offsets = make_synthetic(num_docs=60, dim=16, seed=3)
    np.savez(inputs / "data.npz", vectors=vectors, offsets=offsets)
    done = run_sweep(sweep_command(inputs / "data.npz", storage, "tiny", "--max-concurrent", "2",
                                   space=space))
    record.write_text(json.dumps({"args": done.args, "returncode": done.returncode,
                                  "stdout": done.stdout, "stderr": done.stderr}))


def sweep_command(data, storage, name, *extra, space: Path = TINY_SPACE):
    return [sys.executable, "-m", "tune_p7.sweep", "--space", str(space), "--data",
            str(data), "--storage-path", str(storage), "--name", name, *extra]


def run_sweep(command, timeout=300, env=None):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def start_sweep(command, env=None):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def wait_for_line(process, needle, timeout=90):
    """Read the sweep's output until a line containing ``needle``; returns all lines read."""
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    process.kill()
    raise AssertionError(f"no line with {needle!r} in:\n{''.join(lines)}")


TIMINGS = ("seconds", "sequences_per_second")


def without_timings(epochs: list[dict]) -> list[dict]:
    """Epoch metrics without the wall-clock ones, which differ between any two runs."""
    return [{k: v for k, v in epoch.items() if k not in TIMINGS} for epoch in epochs]


def recorded_epochs(sweep_dir, trials) -> dict[str, list[dict]]:
    """{trial_id: its result.json's epochs without wall-clock fields} of the given trials.

    A trial that had ended may still run its last epoch again after a resume, when the
    interrupted session's saved state had not yet taken in its last checkpoint (docs/sweep.md,
    "Resume"): training is deterministic, so only those fields can differ."""
    return {row.trial_id: without_timings(
                read_results(sweep_dir / row.trial_dir / "result.json").epochs)
            for row in trials.itertuples()}


def reported(result_json: Path) -> list[dict]:
    """The lines of a trial's result.json as Ray wrote them, its own fields (pid, done ...)
    included; a line being written right now is left out."""
    text = result_json.read_text() if result_json.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def epochs_across_a_lost_worker(result_json: Path, lost_pid: int) -> list[int]:
    """The epochs reported after a trial's worker was lost mid-run, checked to continue the
    lost worker's epochs exactly.

    The trial continues from the newest checkpoint Ray had registered: that of the lost
    worker's last reported epoch, or of the one before when the worker went while Ray was
    registering it (the epoch's line already in result.json). That epoch then runs again, and
    training is deterministic, so to the same figures (timings and Ray's fields aside); the
    history (read_results) holds every epoch once.
    """
    lines = reported(result_json)
    before = [line for line in lines if line["pid"] == lost_pid]
    after = [line for line in lines if line["pid"] != lost_pid]
    assert before and after, "the trial was not restarted in another worker"
    epochs_before = [line["epoch"] for line in before]
    epochs_after = [line["epoch"] for line in after]
    assert epochs_before == list(range(1, len(before) + 1))
    assert epochs_after == list(range(epochs_after[0], epochs_after[-1] + 1))
    assert epochs_after[0] in (epochs_before[-1], epochs_before[-1] + 1), (epochs_before,
                                                                          epochs_after)
    if epochs_after[0] == epochs_before[-1]:
        def figures(line):
            return {k: v for k, v in line.items() if k not in RAY_FIELDS | set(TIMINGS)}
        assert figures(after[0]) == figures(before[-1])
    assert [epoch["epoch"] for epoch in read_results(result_json).epochs] == list(
        range(1, epochs_after[-1] + 1))
    return epochs_after


def interrupted_cells(experiment_dir: Path) -> list[tuple[Path, str]]:
    """[(trial folder, checkpoint name)] of the cells Ray's saved experiment state has not
    ended and names a checkpoint for: those a resume continues from a checkpoint.

    A sweep's epoch line comes before Ray saves the state that records that epoch's
    checkpoint: a test that kills a sweep to resume an interrupted cell waits for one."""
    cells = []
    for trial, metadata in newest_trial_data(experiment_dir):
        named, trial_dir = resume_checkpoint(metadata), experiment_dir / trial["relative_logdir"]
        if named and trial["status"] != "TERMINATED" and (read_params(trial_dir) or {}).get("cell"):
            cells.append((trial_dir, named))
    return cells


def wait_for_trial_workers_to_exit(experiment_dir: Path, timeout: float = 60) -> None:
    """Wait until every trial worker that reported into ``experiment_dir`` has exited: those
    of a killed driver live on for a moment and may still write a checkpoint."""
    workers = {line["pid"] for result in experiment_dir.glob("*/result.json")
               for line in reported(result)}
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived the killed driver"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (the orphaned workers' new parent reaps them)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
