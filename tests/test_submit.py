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
from tune_p7.submit import PathCheck, UserError

PROJECT = Path(submit.__file__).resolve().parent.parent
TINY_SPACE = PROJECT / "tests" / "sweep" / "tiny.yaml"  # a 16-wide model: seconds per trial
REMOTE = "http://10.0.0.1:8265"
LOCAL = "http://127.0.0.1:8265"
pytestmark = pytest.mark.filterwarnings(  # inside Ray's own log streaming
    "ignore:ssl=None is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def no_cluster_environment(monkeypatch):
    """Tests see no Ray address or token of the person running them."""
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                 "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = submit.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------
# Address, paths, runtime env, auth: no cluster needed


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
    assert not submit.is_loopback(REMOTE)
    assert not submit.is_loopback("http://head.example:8265")


def test_plan_gives_the_sweep_absolute_paths_a_name_and_address_auto(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = submit.sweep_plan(["--data", "vectors.npz", "--epochs", "2",
                              "--space", str(PROJECT / "search_spaces" / "p7.yaml")],
                             None, None, PROJECT)
    arguments = plan.arguments
    assert arguments[:2] == ["--epochs", "2"]
    assert arguments[arguments.index("--data") + 1] == str(tmp_path / "vectors.npz")
    assert arguments[arguments.index("--storage-path") + 1] == str(tmp_path / "results")
    assert arguments[arguments.index("--space") + 1] == "search_spaces/p7.yaml"  # uploaded
    assert arguments[-2:] == ["--address", "auto"]
    assert plan.name.startswith("p7-") and arguments[arguments.index("--name") + 1] == plan.name
    assert plan.entrypoint.startswith("python -u -m tune_p7.sweep --epochs 2 ")
    assert plan.sweep_folder == tmp_path / "results" / plan.name
    assert plan.checks == [  # the space travels with the project: nothing to check
        PathCheck("--storage-path", "results (the default)", tmp_path / "results", "storage"),
        PathCheck("--data", "vectors.npz", tmp_path / "vectors.npz", "file")]


def test_plan_checks_a_space_outside_the_project_and_keeps_shipped_data_names(tmp_path):
    space = tmp_path / "space.yaml"
    plan = submit.sweep_plan(["--space", str(space), "--data", "synthetic"], "a",
                             str(tmp_path), PROJECT)
    assert plan.checks[1:] == [PathCheck("--space", str(space), space, "file")]
    assert plan.arguments[plan.arguments.index("--data") + 1] == "synthetic"
    with pytest.raises(UserError, match="--space search_spaces/missing.yaml is not a file"):
        submit.sweep_plan(["--space", "search_spaces/missing.yaml"], None, None, PROJECT)


def test_plan_refuses_urls_and_options_given_twice(tmp_path):
    with pytest.raises(UserError, match="is a URL, but the sweep uses file paths"):
        submit.sweep_plan([], None, "s3://bucket/sweeps", PROJECT)
    with pytest.raises(UserError, match="--data gs://bucket/v.npz is a URL"):
        submit.sweep_plan(["--data", "gs://bucket/v.npz"], None, None, PROJECT)
    with pytest.raises(UserError, match="--name is given twice"):
        submit.sweep_plan(["--name", "b"], "a", None, PROJECT)
    plan = submit.sweep_plan(["--name", "a", "--storage-path", str(tmp_path)], "a", None,
                             PROJECT)
    assert plan.sweep_folder == tmp_path / "a"
    with pytest.raises(UserError, match="--resume on a cluster needs the --name"):
        submit.sweep_plan(["--resume"], None, None, PROJECT)
    assert "--resume" in submit.sweep_plan(["--resume"], "a", None, PROJECT).arguments


def test_remote_storage_is_an_absolute_folder_checked_only_on_the_cluster():
    plan = submit.sweep_plan([], None, "/mnt/sweeps", PROJECT, remote_storage=True)
    assert plan.checks == [PathCheck("--storage-path", "/mnt/sweeps", Path("/mnt/sweeps"),
                                     "remote-storage")]
    with pytest.raises(UserError, match="--remote-storage needs --storage-path as an absolute"):
        submit.sweep_plan([], None, "sweeps", PROJECT, remote_storage=True)


def test_a_folder_the_cluster_cannot_see_is_refused_in_one_sentence(capsys, tmp_path,
                                                                     monkeypatch):
    asked = []
    monkeypatch.setattr(submit, "connect", lambda address: "client")
    monkeypatch.setattr(submit, "_ask_cluster",  # a cluster that sees none of our files
                        lambda client, address, tests: asked.extend(tests) or [False])
    code, out, err = run_main(capsys, "--address", REMOTE, "--storage-path", str(tmp_path),
                              "--", "--data", "synthetic")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: --storage-path {tmp_path} is a folder of this machine "
                          f"that the cluster at {REMOTE} cannot see; give a folder on "
                          f"storage that this machine and every node mount")
    assert asked[0].startswith(f"test -e {tmp_path}/.tune_p7-submit-")
    assert list(tmp_path.iterdir()) == []  # the marker is gone


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


def test_an_address_that_is_not_the_dashboard_gives_one_sentence(capsys, head):
    code, out, err = run_main(capsys, "status", "raysubmit_x", "--address", head.gcs_address)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: No Ray dashboard answers at http://{head.gcs_address}") or \
        err.startswith(f"error: http://{head.gcs_address} answered, but not like a Ray")


def test_failing_job_passes_its_exit_code_and_logs_to_the_user(capsys, head):
    code, out, err = run_main(capsys, "--address", head.address, "--storage-path",
                              str(head.folder / "sweeps"), "--",
                              "--data", "synthetic", "--profile", "no-such-profile")
    job_id = out.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert code == 2                                   # the sweep's own argument error
    assert "defines no profile 'no-such-profile'" in out  # its stderr, streamed
    assert f"job {job_id} FAILED (exit code 2)" in err
    code, out, _ = run_main(capsys, "status", job_id, "--address", head.address)
    assert code == 0 and "status:       FAILED" in out and "exit code:    2" in out
    assert f"sweep folder: {head.folder / 'sweeps'}/p7-" in out
    code, out, _ = run_main(capsys, "logs", job_id, "--address", head.address)
    assert code == 0 and "defines no profile 'no-such-profile'" in out
    code, out, _ = run_main(capsys, "logs", job_id, "--follow", "--address", head.address)
    assert code == 2 and "defines no profile 'no-such-profile'" in out


def test_paths_the_cluster_cannot_use_are_refused_before_the_sweep_starts(capsys, head):
    storage = head.folder / "sweeps"
    code, out, err = run_main(capsys, "--address", head.address, "--storage-path",
                              str(storage), "--", "--data", str(head.folder / "missing.npz"))
    assert code == 2 and out == ""
    assert err == (f"error: --data {head.folder / 'missing.npz'} cannot be read on the "
                   f"cluster at {head.address}; put it on storage every node mounts and "
                   f"pass that path.\n")
    assert not list(storage.glob(".tune_p7-submit-*"))
    code, out, err = run_main(capsys, "--address", head.address, "--remote-storage",
                              "--storage-path", "/proc/tp7/sweeps", "--", "--data", "synthetic")
    assert code == 2 and err == (
        f"error: --storage-path /proc/tp7/sweeps cannot be created or written on the cluster "
        f"at {head.address}; give a folder that every node mounts and the cluster's user may "
        f"write.\n")


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
