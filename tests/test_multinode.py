"""A sweep on a real two-node Ray cluster on this machine (Ray's own ray.cluster_utils.Cluster).

The head and a worker node have one CPU each, so two trials run at once, one per node. The
sweep's driver joins with --address as on any cluster; every node sees the same folders,
so the shared-storage check passes. Losing the worker node mid-trial (its raylet and
workers killed) must lose nothing: its trial is retried from its last epoch checkpoint on
the head, and the sweep finishes with every cell.

The cluster (tests/ray_cluster.py, in a process of its own) is private: its own temp dir
(RAY_TMPDIR: no other Ray on this machine finds it) and its own token (RAY_AUTH_MODE=token).
Ray 2.60 binds nodes to the machine's address, not loopback (as it does for `ray start
--node-ip-address 127.0.0.1`, docs/cluster.md); the token protects them. It is shut down
through its Node objects, and its process group is killed if that fails; never `ray stop`.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from conftest import epochs_across_a_lost_worker, reported, run_sweep, start_sweep, \
    sweep_command, wait_for_line, write_chunk_file

EPOCHS = 5
SERVER = Path(__file__).parent / "ray_cluster.py"


@dataclass
class RayCluster:
    address: str                 # the GCS address a driver passes as --address
    raylets: dict[int, str]      # raylet pid -> node name ("head", "worker", ...)
    environment: dict            # what a process needs to join (temp dir, token)
    server: subprocess.Popen     # tests/ray_cluster.py, reading commands

    def command(self, line: str) -> dict:
        self.server.stdin.write(line + "\n")
        self.server.stdin.flush()
        return json.loads(self.server.stdout.readline())


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, one CPU each, with a private temp dir and token."""
    folder = Path(tempfile.mkdtemp(prefix="tp7mn-", dir="/tmp"))  # short: socket paths
    token = folder / "token"
    token.write_text(secrets.token_hex(16))
    token.chmod(0o600)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    environment.update(RAY_TMPDIR=str(folder), RAY_AUTH_MODE="token",
                       RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    server = subprocess.Popen([sys.executable, str(SERVER), "1", "1"], env=environment,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        started = json.loads(server.stdout.readline() or "{}")
        assert "address" in started, "the test cluster did not start"
        yield RayCluster(started["address"],
                          {pid: name for name, pid in started["raylets"].items()},
                          environment, server)
    finally:
        try:
            server.communicate("quit\n", timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def parent_pid(pid: int) -> int | None:
    """The parent of a live process (a Ray worker's parent is its node's raylet), else None."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_trials_spread_over_the_nodes_and_a_lost_node_loses_no_trial(cluster, tmp_path):
    data = write_chunk_file(tmp_path / "data.npz", num_docs=200)  # about a second an epoch
    sweep = start_sweep(sweep_command(data, tmp_path, "nodes", "--address", cluster.address,
                                      "--epochs", str(EPOCHS), "--num-samples", "0"),
                        env=cluster.environment)
    experiment = tmp_path / "nodes" / "ray" / "sweep"
    node_of: dict[int, str] = {}  # trial worker pid -> the node it ran on
    lost, finished = None, {}
    deadline = time.time() + 400
    while sweep.poll() is None and time.time() < deadline:
        results = {path.parent.name: reported(path)
                   for path in sorted(experiment.glob("*/result.json"))}
        for line in (line for lines in results.values() for line in lines):
            if line["pid"] not in node_of and parent_pid(line["pid"]) in cluster.raylets:
                node_of[line["pid"]] = cluster.raylets[parent_pid(line["pid"])]
        done = {name for name, lines in results.items()
                if lines and lines[-1]["epoch"] == EPOCHS}
        on_worker = [(name, lines[-1]["pid"]) for name, lines in results.items()
                     if lines and node_of.get(lines[-1]["pid"]) == "worker"
                     and lines[-1]["epoch"] == 1]
        # Lose the worker node at the first epoch of its second trial, so that some trials had
        # finished and this one has seconds to go (with 2 epochs left, a loaded machine once
        # let it finish before the node was gone).
        if lost is None and done and on_worker:
            lost = on_worker[0]
            finished = {name: (experiment / name / "result.json").read_text() for name in done}
            assert cluster.command("remove worker") == {"removed": "worker"}
        time.sleep(0.1)
    output = sweep.communicate(timeout=60)[0]
    # A raylet's "[state-dump]" lines can fill the tail (seen once with a driver that died of
    # SIGSEGV as the node went): the message shows the lines before them.
    told = "".join(line for line in output.splitlines(keepends=True)
                   if "[state-dump]" not in line)
    assert sweep.returncode == 0, told[-3000:]
    assert lost is not None, "no trial ran on the worker node long enough to lose it"
    assert "local to this node" not in output  # the shared-storage check passed

    trials = pd.read_parquet(tmp_path / "nodes" / "trials.parquet")
    assert sorted(trials.cell) == ["baseline", "higher_margin", "larger_context",
                                   "strong_anchor"]
    assert (trials.status == "complete").all() and (trials.epochs_run == EPOCHS).all()
    assert set(node_of.values()) == {"head", "worker"}  # trials ran on both nodes
    # The lost trial continued on the head from its last checkpoint, to the last epoch.
    result_json = experiment / lost[0] / "result.json"
    after = epochs_across_a_lost_worker(result_json, lost[1])
    assert after[-1] == EPOCHS
    assert {node_of.get(line["pid"]) for line in reported(result_json)
            if line["pid"] != lost[1]} == {"head"}
    # Trials that had finished before the node was lost are kept as they were.
    assert {name: (experiment / name / "result.json").read_text()
            for name in finished} == finished


def test_a_trial_no_node_can_hold_fails_after_resource_wait(cluster, tmp_path):
    done = run_sweep(sweep_command("synthetic", tmp_path, "big", "--address", cluster.address,
                                   "--cpus-per-trial", "2", "--resource-wait", "3"),
                     timeout=120, env=cluster.environment)
    missing = "--cpus-per-trial 2 asks for 2 CPUs per trial, but the largest node has 1"
    assert done.returncode == 2, done.stdout + done.stderr
    assert (f"waiting up to 3 s (--resource-wait) for a node that can hold one trial: "
            f"{missing}; an autoscaler may add one.\n") in done.stdout
    assert done.stderr.endswith(
        f"error: After waiting 3 s (--resource-wait) no node of the cluster at "
        f"{cluster.address} can hold one trial: {missing}; lower --cpus-per-trial to at "
        f"most 1, or add a node that has it.\n")
    assert not (tmp_path / "big").exists()  # a refused sweep leaves no folder


WAITER = """
import sys, ray
from tune_p7.resources import check_trial_fits
ray.init(address=sys.argv[1], log_to_driver=False)
check_trial_fits({"CPU": 2}, sys.argv[1], wait_seconds=120)
print("fits", flush=True)
"""


def test_a_node_that_joins_during_the_wait_ends_it(cluster):
    waiter = start_sweep([sys.executable, "-c", WAITER, cluster.address],
                         env=cluster.environment)
    try:
        wait_for_line(waiter, "waiting up to 120 s (--resource-wait)")
        cluster.command("add 2")  # what an autoscaler does
        wait_for_line(waiter, "fits")
    finally:
        waiter.kill()
        waiter.wait(timeout=30)
