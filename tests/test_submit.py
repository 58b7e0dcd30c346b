"""tune_p7.submit: address/auth/path checks, and real Ray Jobs on a private local head.

The cluster tests start one Ray head per module on 127.0.0.1 with its own ports, temp dir
and token (RAY_AUTH_MODE=token), and tear it down by its own process group and temp dir
even when a test fails: `ray stop` would also stop other people's Ray on this machine.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tune_p7 import submit
from tune_p7.results import load_sweep
from tune_p7.submit import Cluster, UserError

PROJECT = Path(submit.__file__).resolve().parent.parent
TINY_SPACE = PROJECT / "tests" / "sweep" / "tiny.yaml"  # a 16-wide model: seconds per trial
pytestmark = pytest.mark.filterwarnings(  # inside Ray's own log streaming
    "ignore:ssl=None is deprecated:DeprecationWarning")
REMOTE = Cluster("http://10.0.0.1:8265", local=False)
LOCAL = Cluster("http://127.0.0.1:8265", local=True)


@pytest.fixture(autouse=True)
def no_cluster_environment(monkeypatch):
    """Tests see no Ray address or token of the person running them."""
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                 "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def never_connect(monkeypatch):
    """Fail if a test of a remote-looking address would send traffic anywhere."""
    def refuse(cluster):
        raise AssertionError(f"tried to connect to {cluster.address}")
    monkeypatch.setattr(submit, "connect", refuse)


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = submit.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------
# Address, paths, runtime env: no cluster needed


def test_address_is_the_dashboard_url(monkeypatch):
    assert submit.dashboard_address("127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert submit.dashboard_address("https://head:8265/") == "https://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://head:8265")
    assert submit.dashboard_address(None) == "http://head:8265"
    for wrong in ("ray://head:10001", "auto"):
        with pytest.raises(UserError, match="not a dashboard address"):
            submit.dashboard_address(wrong)


def test_only_loopback_addresses_count_as_this_machine():
    assert submit.is_loopback("http://127.0.0.1:8265")
    assert submit.is_loopback("http://localhost:8265")
    assert submit.is_loopback("http://[::1]:8265")
    assert not submit.is_loopback("http://10.0.0.1:8265")
    assert not submit.is_loopback("http://head.example:8265")


def test_local_cluster_gets_absolute_paths_a_name_and_address_auto(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vectors.npz").write_bytes(b"")
    plan = submit.sweep_plan(["--data", "vectors.npz", "--epochs", "2",
                              "--space", str(PROJECT / "search_spaces" / "p7.yaml")],
                             None, None, LOCAL, PROJECT)
    arguments = plan.arguments
    assert arguments[:2] == ["--epochs", "2"]
    assert arguments[arguments.index("--data") + 1] == str(tmp_path / "vectors.npz")
    assert arguments[arguments.index("--storage-path") + 1] == str(tmp_path / "results")
    assert arguments[arguments.index("--space") + 1] == "search_spaces/p7.yaml"  # uploaded
    assert arguments[-2:] == ["--address", "auto"]
    assert plan.name.startswith("p7-") and arguments[arguments.index("--name") + 1] == plan.name
    assert plan.entrypoint.startswith("python -u -m tune_p7.sweep --epochs 2 ")
    assert plan.sweep_folder == f"{tmp_path / 'results'}/{plan.name}"


def test_remote_cluster_refuses_a_local_storage_path_in_one_sentence(capsys, tmp_path,
                                                                      never_connect):
    code, out, err = run_main(capsys, "--address", REMOTE.address, "--storage-path",
                              str(tmp_path), "--", "--data", "synthetic")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--storage-path {tmp_path} is a folder of this machine" in err
    assert "every node mounts" in err


def test_remote_cluster_needs_shared_storage(tmp_path, never_connect):
    with pytest.raises(UserError, match="--storage-path is required"):
        submit.sweep_plan(["--data", "synthetic"], None, None, REMOTE, PROJECT)
    with pytest.raises(UserError, match="is a URL, but the sweep writes to a folder"):
        submit.sweep_plan([], None, "s3://bucket/sweeps", REMOTE, PROJECT)
    shared = Cluster(REMOTE.address, local=False, shared_fs=True)
    plan = submit.sweep_plan(["--data", "/shared/vectors.npz"], None, "/shared/sweeps",
                             shared, PROJECT)
    assert plan.sweep_folder.startswith("/shared/sweeps/p7-")
    assert "/shared/vectors.npz" in plan.arguments


def test_a_folder_on_a_network_mount_is_shared_storage(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      "nas:/export /mnt/shared\\040sweeps nfs4 rw 0 0\n"
                      "tmpfs /mnt/shared\\040sweeps/scratch tmpfs rw 0 0\n")
    assert submit.on_network_file_system(Path("/mnt/shared sweeps/p7"), mounts)
    assert not submit.on_network_file_system(Path("/mnt/shared sweeps/scratch/x"), mounts)
    assert not submit.on_network_file_system(Path("/home/me/results"), mounts)


def test_remote_cluster_refuses_local_data_and_a_space_outside_the_project(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(submit, "on_network_file_system",
                        lambda path: str(path).startswith("/shared"))
    data = tmp_path / "vectors.npz"
    data.write_bytes(b"")
    with pytest.raises(UserError, match="is a file of this machine, which the cluster"):
        submit.sweep_plan(["--data", str(data)], None, "/shared", REMOTE, PROJECT)
    with pytest.raises(UserError, match="is a URL, but the sweep reads a file"):
        submit.sweep_plan(["--data", "s3://bucket/vectors.npz"], None, "/shared", REMOTE,
                          PROJECT)
    space = tmp_path / "space.yaml"
    space.write_text("cells: {}\n")
    with pytest.raises(UserError, match="lies outside the project folder"):
        submit.sweep_plan(["--space", str(space)], None, "/shared", REMOTE, PROJECT)
    plan = submit.sweep_plan(["--data", "/shared/vectors.npz"], None, "/shared", REMOTE,
                             PROJECT)
    assert "/shared/vectors.npz" in plan.arguments
    with pytest.raises(UserError, match="is not a file"):
        submit.sweep_plan(["--data", str(tmp_path / "missing.npz")], None, None, LOCAL, PROJECT)


def test_name_and_storage_path_are_given_once_and_resume_needs_a_name(tmp_path):
    with pytest.raises(UserError, match="--name is given twice"):
        submit.sweep_plan(["--name", "b"], "a", None, LOCAL, PROJECT)
    plan = submit.sweep_plan(["--name", "a", "--storage-path", str(tmp_path)], "a", None,
                             LOCAL, PROJECT)
    assert plan.sweep_folder == f"{tmp_path}/a"
    with pytest.raises(UserError, match="--resume on a cluster needs the --name"):
        submit.sweep_plan(["--resume"], None, None, LOCAL, PROJECT)
    resumed = submit.sweep_plan(["--resume"], "a", None, LOCAL, PROJECT)
    assert "--resume" in resumed.arguments


def test_runtime_env_uploads_the_project_without_results_and_keeps_the_users_fields(tmp_path):
    env_file = tmp_path / "env.yaml"
    env_file.write_text("pip: [optuna]\nenv_vars: {OMP_NUM_THREADS: '1'}\nexcludes: [big/]\n")
    env = submit.runtime_env(PROJECT, str(env_file))
    assert env["working_dir"] == str(PROJECT)
    assert env["pip"] == ["optuna"] and env["env_vars"] == {"OMP_NUM_THREADS": "1"}
    assert {"big/", "/results/", ".git", ".venv/", "__pycache__/"} <= set(env["excludes"])
    env_file.write_text("- pip\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        submit.runtime_env(PROJECT, str(env_file))
    with pytest.raises(UserError, match="cannot be read"):
        submit.runtime_env(PROJECT, str(tmp_path / "missing.yaml"))


def test_token_is_found_where_ray_looks_for_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert submit.client_token() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert submit.client_token() == ("from-home", str(tmp_path / ".ray" / "auth_token"))
    named = tmp_path / "token"
    named.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert submit.client_token() == ("from-path", str(named))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert submit.client_token() == ("from-env", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="RAY_AUTH_TOKEN_PATH=.* cannot be read"):
        submit.client_token()


def test_authentication_follows_the_cluster(capsys):
    token = ("secret", "RAY_AUTH_TOKEN")
    assert submit.auth_headers(LOCAL, "token", None, token) == {
        "Authorization": "Bearer secret"}
    assert submit.auth_headers(LOCAL, "token", "token", token) == {
        "Authorization": "Bearer secret"}
    with pytest.raises(UserError, match="requires token authentication but RAY_AUTH_MODE="):
        submit.auth_headers(LOCAL, "token", "disabled", token)
    with pytest.raises(UserError, match="no token was found here"):
        submit.auth_headers(LOCAL, "token", None, None)
    assert submit.auth_headers(LOCAL, "disabled", "token", token) == {}
    assert "does not use token authentication" in capsys.readouterr().err
    assert submit.auth_headers(REMOTE, "disabled", None, None) == {}
    assert "anyone who reaches its dashboard can run code" in capsys.readouterr().err


def test_exit_code_is_the_jobs_outcome():
    assert submit.job_exit_code("SUCCEEDED", 0) == 0
    assert submit.job_exit_code("FAILED", 2) == 2
    assert submit.job_exit_code("FAILED", None) == 1      # e.g. runtime env setup failed
    assert submit.job_exit_code("FAILED", -9) == 137      # driver killed by SIGKILL
    assert submit.job_exit_code("STOPPED", None) == 1


def test_wrong_address_gives_one_sentence_not_a_traceback(capsys):
    closed = _free_port()
    for argv in (["--address", f"http://127.0.0.1:{closed}", "--", "--data", "synthetic"],
                 ["status", "raysubmit_x", "--address", f"127.0.0.1:{closed}"]):
        code, out, err = run_main(capsys, *argv)
        assert code == 2 and out == ""
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: No Ray dashboard answers at http://127.0.0.1:{closed}")


# ---------------------------------------------------------------------------------------
# A real Ray head on 127.0.0.1


@dataclass(frozen=True)
class Head:
    address: str         # dashboard / Ray Jobs URL
    gcs_address: str     # what `ray.init(address=...)` on the head node connects to
    token_file: Path     # the cluster's token (RAY_AUTH_TOKEN_PATH of every Ray process)
    folder: Path         # temp dir of the head; also holds the storage for sweeps


@pytest.fixture(scope="module")
def ray_head():
    """A private Ray head: 2 CPUs, dashboard on 127.0.0.1, token authentication.

    ``ray start --block`` runs in a new session, so every process of this head shares its
    process group; job drivers (Ray starts them in their own session) run inside the temp
    dir. The finalizer stops exactly those, never another Ray on this machine.
    """
    folder = Path(tempfile.mkdtemp(prefix="tp7ray-", dir="/tmp"))  # short: socket paths
    token_file = folder / "token"
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    dashboard_port, gcs_port = _free_port(), _free_port()
    env = {**_without_ray_settings(os.environ), "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token_file), "RAY_USAGE_STATS_ENABLED": "0",
           # the job's `python` is the first one on the head's PATH: this venv's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
               "--node-ip-address", "127.0.0.1", "--port", str(gcs_port),
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
               "--include-dashboard", "true", "--ray-client-server-port", str(_free_port()),
               "--dashboard-agent-listen-port", str(_free_port()),
               "--runtime-env-agent-port", str(_free_port()),
               "--metrics-export-port", str(_free_port()),
               "--temp-dir", str(folder / "ray"), "--num-cpus", "2", "--num-gpus", "0",
               "--disable-usage-stats"]
    log = folder / "head.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        head = Head(f"http://127.0.0.1:{dashboard_port}", f"127.0.0.1:{gcs_port}", token_file,
                    folder)
        _wait_for_jobs_api(head, process, log)
        yield head
    finally:
        _stop_head(process, folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def head(ray_head, monkeypatch):
    """The head, with this client holding its token (RAY_AUTH_MODE unset: follow it)."""
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token_file))
    return ray_head


def test_client_and_cluster_that_disagree_on_auth_get_one_clear_sentence(capsys, head,
                                                                         monkeypatch,
                                                                         tmp_path):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    code, _, err = run_main(capsys, "status", "raysubmit_x", "--address", head.address)
    assert code == 2 and err.count("\n") == 1
    assert "requires token authentication but RAY_AUTH_MODE=disabled here" in err
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-clusters-token")
    code, _, err = run_main(capsys, "status", "raysubmit_x", "--address", head.address)
    assert code == 2 and err.count("\n") == 1
    assert "rejected the token from RAY_AUTH_TOKEN" in err
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))
    code, _, err = run_main(capsys, "status", "raysubmit_x", "--address", head.address)
    assert code == 2 and "no token was found here" in err


def test_failing_job_passes_its_exit_code_and_logs_to_the_user(capsys, head):
    code, out, err = run_main(capsys, "--address", head.address, "--storage-path",
                              str(head.folder / "sweeps"), "--",
                              "--data", "synthetic", "--profile", "no-such-profile")
    job_id = out.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert code == 2                                   # the sweep's own argument error
    assert "invalid choice: 'no-such-profile'" in out  # its stderr, streamed
    assert f"job {job_id} FAILED (exit code 2)" in err
    code, out, _ = run_main(capsys, "status", job_id, "--address", head.address)
    assert code == 0 and "status:       FAILED" in out and "exit code:    2" in out
    assert f"sweep folder: {head.folder / 'sweeps'}/p7-" in out
    code, out, _ = run_main(capsys, "logs", job_id, "--address", head.address)
    assert code == 0 and "invalid choice: 'no-such-profile'" in out


def test_stop_ends_a_running_job_and_unknown_jobs_are_named(capsys, head):
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head.address, headers={
        "Authorization": f"Bearer {head.token_file.read_text()}"})
    job_id = client.submit_job(entrypoint="sleep 120")
    _wait_for(lambda: client.get_job_status(job_id) == JobStatus.RUNNING, 60)
    code, _, err = run_main(capsys, "stop", job_id, "--address", head.address)
    assert code == 0 and f"stopping {job_id}" in err
    _wait_for(lambda: client.get_job_status(job_id) == JobStatus.STOPPED, 60)
    code, _, err = run_main(capsys, "stop", job_id, "--address", head.address)
    assert code == 0 and "had already ended (STOPPED)" in err
    code, _, err = run_main(capsys, "logs", "raysubmit_nope", "--address", head.address)
    assert code == 2 and "There is no job raysubmit_nope on the cluster" in err


def test_tiny_sweep_runs_on_the_cluster_and_lands_in_the_storage_path(capsys, head):
    storage = head.folder / "sweeps"
    code, out, err = run_main(capsys, "--address", head.address, "--storage-path",
                              str(storage), "--name", "tiny", "--",
                              "--data", "synthetic", "--space", str(TINY_SPACE),
                              "--profile", "quick", "--epochs", "2", "--num-samples", "1")
    assert code == 0, out[-3000:] + err
    job_id = out.splitlines()[0]
    assert f"job {job_id} SUCCEEDED" in err
    assert "--space tests/sweep/tiny.yaml " in out   # uploaded with the project
    sweep_folder = storage / "tiny"
    assert (sweep_folder / "sweep.json").is_file()
    assert (sweep_folder / "trials.parquet").is_file()
    sweep = load_sweep(sweep_folder)
    trials, history = sweep.trials, sweep.history
    assert sorted(trials["phase"]) == ["baseline"] * 4 + ["optuna"]
    assert set(trials["status"]) <= {"complete", "stopped_early"}
    assert len(history) == trials["epochs_run"].sum() and history["epoch"].max() == 2


def test_sweep_on_the_head_node_with_address_auto_lands_in_the_storage_path(head):
    storage = head.folder / "from-head"
    env = {**os.environ, "RAY_ADDRESS": head.gcs_address, "RAY_AUTH_MODE": "token"}
    finished = subprocess.run(
        [sys.executable, "-m", "tune_p7.sweep", "--address", "auto", "--storage-path",
         str(storage), "--name", "on-head", "--data", "synthetic", "--space", str(TINY_SPACE),
         "--epochs", "1", "--num-samples", "0"],
        env=env, cwd=head.folder, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    trials = load_sweep(storage / "on-head").trials
    assert sorted(trials["cell"]) == ["baseline", "higher_margin", "larger_context",
                                      "strong_anchor"]
    assert set(trials["status"]) == {"complete"}


# ---------------------------------------------------------------------------------------
# Helpers of the cluster fixture


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _without_ray_settings(environ) -> dict:
    return {key: value for key, value in environ.items()
            if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}


def _wait_for(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def _wait_for_jobs_api(head: Head, process: subprocess.Popen, log: Path) -> None:
    """Until the Jobs API answers an authenticated request (about 5 s)."""
    request = urllib.request.Request(f"{head.address}/api/jobs/", headers={
        "Authorization": f"Bearer {head.token_file.read_text()}"})
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            pytest.fail(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def _stop_head(process: subprocess.Popen, folder: Path) -> None:
    """SIGTERM, then SIGKILL, every process of this head: its process group, and anything
    running in or named after its temp dir (job drivers live in their own session)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        for pid in _head_processes(process.pid, folder):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while _head_processes(process.pid, folder) and time.monotonic() < deadline:
            process.poll()  # reap `ray start` itself
            time.sleep(0.2)
    process.wait(timeout=10)
    leftover = _head_processes(process.pid, folder)
    assert not leftover, f"Ray processes survived the test head: {leftover}"


def _head_processes(group: int, folder: Path) -> list[int]:
    """Live processes of the head's process group, or whose cwd/command line is in folder."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cwd = os.readlink(entry / "cwd")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, process_group = fields[0], int(fields[2])
        if state != "Z" and (process_group == group or cwd.startswith(str(folder))
                             or str(folder).encode() in command):
            found.append(int(entry.name))
    return found
