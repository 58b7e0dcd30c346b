"""``python -m tune_p7.submit``: run a sweep on a Ray cluster as a Ray Job, follow, stop it.

    python -m tune_p7.submit --address http://HEAD:8265 [--no-wait] [--name NAME]
        [--storage-path DIR] [--runtime-env FILE] -- <python -m tune_p7.sweep arguments>
    python -m tune_p7.submit status|logs|stop JOB [--address http://HEAD:8265]

The job runs ``python -u -m tune_p7.sweep <arguments> --address auto`` on the cluster, with
this project folder as its working directory (Ray uploads it without results, caches, .git
and virtualenvs), so the driver and every trial import this very tune_p7; the cluster's
``python`` must have the dependencies (docs/cluster.md). Before that, one tiny job checks
on the cluster that it sees the same ``--storage-path`` folder as this machine (a marker
file written here must be visible there) and can read ``--data``: a folder of this machine
is refused unless it is shared storage (or ``--remote-storage`` says it exists only on the
cluster). An address tells nothing about this (an SSH tunnel or a port-forward makes a
remote head look like 127.0.0.1), so the cluster is asked.
Ray's token authentication follows the cluster (``RAY_AUTH_MODE``, docs/cluster.md).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse


import tune_p7
from tune_p7 import command
from tune_p7.files import UnreadableFile, read_yaml

SWEEP_ENTRYPOINT = "python -u -m tune_p7.sweep"
JOB_COMMANDS = ("status", "logs", "stop")
# Never uploaded with the project (gitignore patterns; Ray also honours .gitignore).
UPLOAD_EXCLUDES = ["/results/", ".git", ".venv/", "venv/", "__pycache__/", ".pytest_cache/",
                   ".cache/", "*.egg-info/", "/build/", "/dist/"]
TOKEN_FILE = Path("~/.ray/auth_token")
PATH_CHECK_SECONDS = 120
SHARED_HINT = ("give a folder on storage that this machine and every node mount (NFS, "
               "Lustre, a mounted bucket), or add --remote-storage if only the cluster "
               "mounts it")


class UserError(Exception):
    """A problem with the user's input; the message is one sentence naming the fix (exit 2)."""


@dataclass(frozen=True)
class PathCheck:
    """A path the job needs, to be checked on the cluster before submitting.

    flag/given: the option and its value as the user wrote it (for messages).
    path: the absolute path the sweep receives.
    kind: "storage" (the sweep writes there: the cluster must see this machine's folder),
        "remote-storage" (a folder only the cluster mounts: it must be writable there)
        or "file" (the sweep reads it on the cluster).
    """

    flag: str
    given: str
    path: Path
    kind: str


@dataclass(frozen=True)
class SweepPlan:
    """The sweep as it runs on the cluster: its arguments, its folder, the paths to check."""

    arguments: list[str]
    name: str
    storage_path: Path
    checks: list[PathCheck]

    @property
    def entrypoint(self) -> str:
        return f"{SWEEP_ENTRYPOINT} {shlex.join(self.arguments)}"

    @property
    def sweep_folder(self) -> Path:
        return self.storage_path / self.name


# ---------------------------------------------------------------------------------------
# The cluster: address and authentication


def dashboard_address(value: str | None) -> str:
    """The dashboard URL from --address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS."""
    value = value or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not value:
        raise UserError("No cluster given: pass --address http://HEAD:8265 (the head node's "
                        "dashboard) or set RAY_API_SERVER_ADDRESS.")
    if "://" not in value and value != "auto":
        value = f"http://{value}"
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--address {value} is not a dashboard address; pass the head node's "
                        f"Ray Jobs endpoint, e.g. http://HEAD:8265.")
    return value.rstrip("/")


def is_loopback(address: str) -> bool:
    """Whether the URL names this machine's loopback interface (127.0.0.1, ::1, localhost)."""
    host = urlparse(address).hostname
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cluster_auth_mode(address: str) -> str:
    """The cluster's RAY_AUTH_MODE as its dashboard reports it: "token" or "disabled".

    The endpoint is public; a dashboard without it (Ray < 2.52) has no token auth.
    """
    try:
        with urllib.request.urlopen(f"{address}/api/authentication_mode", timeout=10) as reply:
            return json.load(reply).get("authentication_mode", "disabled")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return "disabled"
        raise UserError(f"{address} answered HTTP {error.code}, not like a Ray dashboard; "
                        f"pass the head node's Ray Jobs endpoint, e.g. http://HEAD:8265.")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or type(error).__name__
        raise UserError(f"No Ray dashboard answers at {address} ({reason}); start the "
                        f"cluster or fix --address (the head node's dashboard, usually "
                        f"port 8265).") from None
    except ValueError:
        raise UserError(f"{address} answered, but not like a Ray dashboard; pass the head "
                        f"node's Ray Jobs endpoint, e.g. http://HEAD:8265.") from None


def client_token() -> tuple[str, str] | None:
    """This machine's Ray token and where it came from, in Ray's order of precedence:
    RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named or TOKEN_FILE).expanduser()
    try:
        token = path.read_text().strip()
    except OSError:
        token = ""
    if named and not token:
        raise UserError(f"RAY_AUTH_TOKEN_PATH={named} cannot be read or is empty; point it "
                        f"at a file holding the cluster's token.")
    return (token, str(path)) if token else None


def auth_headers(address: str, cluster_mode: str, client_mode: str | None,
                 token: tuple[str, str] | None) -> dict[str, str]:
    """HTTP headers that authenticate this client the way the cluster wants.

    client_mode is this machine's RAY_AUTH_MODE (None: unset, follow the cluster).
    """
    if cluster_mode != "token":
        if client_mode == "token":
            _note(f"RAY_AUTH_MODE=token here, but the cluster at {address} does not use "
                  f"token authentication; submitting without a token.")
        elif not is_loopback(address):
            _note(f"the cluster at {address} has token authentication off: anyone who "
                  f"reaches its dashboard can run code on it (docs/cluster.md, Security).")
        return {}
    if client_mode is not None and client_mode.lower() != "token":
        raise UserError(f"The cluster at {address} requires token authentication but "
                        f"RAY_AUTH_MODE={client_mode} here; unset RAY_AUTH_MODE or set it to "
                        f"token.")
    if token is None:
        raise UserError(f"The cluster at {address} requires token authentication and no "
                        f"token was found here; put the cluster's token (`ray get-auth-token` "
                        f"on its head node) in ~/.ray/auth_token, in a file named by "
                        f"RAY_AUTH_TOKEN_PATH, or in RAY_AUTH_TOKEN.")
    return {"Authorization": f"Bearer {token[0]}"}


def connect(address: str):
    """A JobSubmissionClient for the cluster, authenticated as the cluster requires."""
    try:
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise UserError("Submitting needs Ray's job client; install it with "
                        "pip install -e '.[cluster]' (ray[default]).") from None
    logging.getLogger("ray").setLevel(logging.WARNING)  # not its INFO lines on packaging
    token = client_token()
    headers = auth_headers(address, cluster_auth_mode(address),
                           os.environ.get("RAY_AUTH_MODE"), token)
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        source = token[1] if token else "nowhere"
        raise UserError(f"The cluster at {address} rejected the token from {source}; use the "
                        f"token the cluster was started with (`ray get-auth-token` on its "
                        f"head node).") from None
    except (OSError, RuntimeError) as error:  # requests' errors are OSErrors
        raise UserError(f"The Ray Jobs endpoint at {address} failed ({_first_line(error)}); "
                        f"check that --address is the head node's dashboard.") from None


# ---------------------------------------------------------------------------------------
# The sweep's arguments, made right for the cluster


def project_folder() -> Path:
    """The checkout that holds this tune_p7 (uploaded as the job's working directory)."""
    folder = Path(tune_p7.__file__).resolve().parent.parent
    if not (folder / "pyproject.toml").is_file():
        raise UserError(f"tune_p7 is installed in {folder}, not run from a checkout; clone "
                        f"the project and pip install -e . there, so it can be uploaded.")
    return folder


def sweep_plan(sweep_arguments: list[str], name: str | None, storage_path: str | None,
               project: Path, remote_storage: bool = False) -> SweepPlan:
    """The sweep's arguments with absolute paths, a name and ``--address auto``.

    name/storage_path come from submit's own options; each may also be given after ``--``.
    A --space inside the project travels with it (relative path); other paths are checked
    on the cluster (SweepPlan.checks). remote_storage: the storage folder exists only on
    the cluster, so it must be given as an absolute path.
    """
    given, rest = _path_arguments().parse_known_args(sweep_arguments)
    name = _once("--name", name, given.name)
    storage_given = _once("--storage-path", storage_path, given.storage_path)
    if name is None:
        if "--resume" in rest:
            raise UserError("--resume on a cluster needs the --name of the sweep to continue.")
        name = datetime.now().strftime("p7-%Y%m%d-%H%M%S")
    if remote_storage and not (storage_given and Path(storage_given).is_absolute()):
        raise UserError("--remote-storage needs --storage-path as an absolute path on the "
                        "cluster, e.g. /mnt/sweeps.")
    storage = (Path(storage_given) if remote_storage  # a cluster path: no local symlinks
               else _local_path("--storage-path", storage_given or "results"))
    checks = [PathCheck("--storage-path", storage_given or "results (the default)", storage,
                        "remote-storage" if remote_storage else "storage")]
    arguments = rest + ["--name", name, "--storage-path", str(storage)]
    if given.data in ("default", "synthetic"):
        arguments += ["--data", given.data]
    elif given.data is not None:
        data = _local_path("--data", given.data)
        checks.append(PathCheck("--data", given.data, data, "file"))
        arguments += ["--data", str(data)]
    if given.space is not None:
        arguments += ["--space", _space_argument(given.space, project, checks)]
    if not any(arg == "--address" or arg.startswith("--address=") for arg in rest):
        arguments += ["--address", "auto"]
    return SweepPlan(arguments, name, storage, checks)


def _path_arguments() -> argparse.ArgumentParser:
    """The sweep arguments submit rewrites; all others pass through unchanged."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--name", "--storage-path", "--data", "--space"):
        parser.add_argument(flag)
    return parser


def _once(flag: str, before: str | None, after: str | None) -> str | None:
    if before is not None and after is not None and before != after:
        raise UserError(f"{flag} is given twice ({before} and {after}); give it once, before "
                        f"or after --.")
    return before if before is not None else after


def _local_path(flag: str, value: str) -> Path:
    """An absolute path (relative ones are relative to this shell's directory)."""
    if "://" in value and not value.startswith("file://"):
        raise UserError(f"{flag} {value} is a URL, but the sweep uses file paths; {SHARED_HINT}.")
    return Path(value.removeprefix("file://")).expanduser().resolve()


def _space_argument(value: str, project: Path, checks: list[PathCheck]) -> str:
    """--space for the job: relative when it travels with the project, else checked."""
    path = _local_path("--space", value)
    if not path.is_relative_to(project):
        checks.append(PathCheck("--space", value, path, "file"))
        return str(path)
    if not path.is_file():
        raise UserError(f"--space {value} is not a file; pass a search space YAML such as "
                        f"search_spaces/p7.yaml.")
    return str(path.relative_to(project))


def check_paths(client, address: str, checks: list[PathCheck]) -> None:
    """Refuse paths the cluster cannot use, asking the cluster itself with one tiny job.

    The job runs where the sweep's driver will, on the head node. A storage folder passes
    when a marker file written here is visible and the folder writable there (a remote
    storage folder: when it can be created and written there); a file passes when it is
    readable there.
    """
    markers = {check: _place_marker(check) for check in checks if check.kind == "storage"}
    tests = [_shell_test(check, markers.get(check)) for check in checks]
    try:
        answers = _ask_cluster(client, address, tests)
    finally:
        for marker in markers.values():
            marker.unlink(missing_ok=True)
    for check, answer in zip(checks, answers):
        if not answer:
            raise UserError(_unreachable(check, address))


def _shell_test(check: PathCheck, marker: Path | None) -> str:
    path = shlex.quote(str(check.path))
    if check.kind == "storage":
        return f"test -e {shlex.quote(str(marker))} -a -w {path}"
    if check.kind == "remote-storage":
        return f"mkdir -p {path} 2>/dev/null && test -w {path}"
    return f"test -r {path}"


def _place_marker(check: PathCheck) -> Path:
    try:
        check.path.mkdir(parents=True, exist_ok=True)
        marker = check.path / f".tune_p7-submit-{secrets.token_hex(4)}"
        marker.write_text("tune_p7.submit path check\n")
    except OSError as error:
        raise UserError(f"{check.flag} {check.given} cannot be written on this machine "
                        f"({error.strerror}); {SHARED_HINT}.") from None
    return marker


def _ask_cluster(client, address: str, tests: list[str]) -> list[bool]:
    """Run shell tests as one job on the cluster; True for each that passed."""
    script = "; ".join(f"if {test}; then r=yes; else r=no; fi; echo tune_p7-path-{index}=$r"
                       for index, test in enumerate(tests))
    job_id = client.submit_job(entrypoint=script,
                               metadata={"job_name": "tune_p7 submit: path check"})
    info = _wait_until_finished(client, job_id, PATH_CHECK_SECONDS)
    answers = dict(re.findall(r"^tune_p7-path-(\d+)=(yes|no)$", client.get_job_logs(job_id),
                              re.MULTILINE))
    if info is None or info.status != "SUCCEEDED" or len(answers) != len(tests):
        outcome = "did not finish" if info is None else f"ended {info.status}"
        raise UserError(f"The path check job {job_id} on the cluster at {address} {outcome}; "
                        f"see `python -m tune_p7.submit logs {job_id}` for why.")
    return [answers[str(index)] == "yes" for index in range(len(tests))]


def _unreachable(check: PathCheck, address: str) -> str:
    if check.kind == "storage":
        return (f"--storage-path {check.given} is a folder of this machine that the cluster "
                f"at {address} cannot see; {SHARED_HINT}.")
    if check.kind == "remote-storage":
        return (f"--storage-path {check.given} cannot be created or written on the cluster "
                f"at {address}; give a folder that every node mounts and the cluster's user "
                f"may write.")
    if check.flag == "--space":
        return (f"--space {check.given} lies outside the project folder and the cluster at "
                f"{address} cannot read it; copy it into search_spaces/ of the project.")
    return (f"--data {check.given} cannot be read on the cluster at {address}; put it on "
            f"storage every node mounts and pass that path.")


def runtime_env(project: Path, env_file: str | None) -> dict:
    """Ray runtime_env of the job: --runtime-env's fields plus the project as working_dir."""
    env = read_runtime_env(env_file) if env_file else {}
    env.setdefault("working_dir", str(project))
    env["excludes"] = list(env.get("excludes", [])) + UPLOAD_EXCLUDES
    return env


def read_runtime_env(path: str) -> dict:
    """A runtime_env mapping (pip, env_vars, ...) from a YAML or JSON file."""
    try:
        content = read_yaml(path)
    except UnreadableFile as error:
        raise UserError(f"--runtime-env {path} {error}; fix the file, see "
                        f"deploy/runtime-env.yaml.") from None
    if not isinstance(content, dict):
        raise UserError(f"--runtime-env {path} must hold a mapping of runtime_env fields "
                        f"(pip, env_vars, ...), see deploy/runtime-env.yaml.")
    return content


# ---------------------------------------------------------------------------------------
# Commands


def submit(options: argparse.Namespace, sweep_arguments: list[str]) -> int:
    """Check everything, submit the sweep job, print its id, and follow it unless --no-wait."""
    address = dashboard_address(options.address)
    project = project_folder()
    plan = sweep_plan(sweep_arguments, options.name, options.storage_path, project,
                      options.remote_storage)
    env = runtime_env(project, options.runtime_env)
    client = connect(address)
    check_paths(client, address, plan.checks)
    try:
        job_id = client.submit_job(
            entrypoint=plan.entrypoint, runtime_env=env,
            entrypoint_num_cpus=options.entrypoint_num_cpus,
            metadata={"job_name": f"tune_p7 sweep {plan.name}",
                      "tune_p7_sweep_folder": str(plan.sweep_folder)})
    except (OSError, RuntimeError, ValueError) as error:
        raise UserError(f"The cluster at {address} refused the job ({_first_line(error)}); "
                        f"check --runtime-env and the cluster's log.") from None
    print(job_id, flush=True)
    _note(f"submitted {job_id}; results land in {plan.sweep_folder}")
    if not options.wait:
        _note(f"follow it with: python -m tune_p7.submit logs {job_id} --follow "
              f"--address {address}")
        return 0
    return follow(client, job_id, address)


def follow(client, job_id: str, address: str) -> int:
    """Stream the job's logs until it ends; exit with its outcome (Ctrl-C only detaches)."""
    try:
        asyncio.run(_print_log_stream(client, job_id))
        info = _wait_until_finished(client, job_id)
    except KeyboardInterrupt:
        _note(f"detached; {job_id} keeps running: python -m tune_p7.submit stop {job_id} "
              f"--address {address} stops it.")
        return 130
    code = job_exit_code(info.status, info.driver_exit_code)
    _note(f"job {job_id} {info.status}"
          + (f" (exit code {code})" if code else "")
          + (f": {_first_line(info.message)}" if info.message and code else ""))
    return code


async def _print_log_stream(client, job_id: str) -> None:
    try:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except RuntimeError as error:  # the stream broke, the job may well go on
        _note(f"log stream of {job_id} ended early ({_first_line(error)}); waiting for "
              f"its end")


def _wait_until_finished(client, job_id: str, seconds: float = math.inf):
    """The job's final JobDetails, or None after ``seconds`` (polled twice a second)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            return info
        time.sleep(0.5)
    return None


def job_exit_code(status: str, driver_exit_code: int | None) -> int:
    """0 when the job SUCCEEDED, the sweep's own exit code when it FAILED, else 1.

    A driver killed by signal N (exit code -N) gives 128 + N, like a shell.
    """
    if status == "SUCCEEDED":
        return 0
    if driver_exit_code:
        return driver_exit_code if driver_exit_code > 0 else 128 - driver_exit_code
    return 1


def job_status(options: argparse.Namespace) -> int:
    """Print one job's status, message, entrypoint and sweep folder."""
    client, info = _job(options)
    folder = (info.metadata or {}).get("tune_p7_sweep_folder", "")
    rows = {"job": options.job, "status": str(info.status),
            "exit code": info.driver_exit_code, "message": _first_line(info.message or ""),
            "entrypoint": info.entrypoint, "sweep folder": folder,
            "started": _time(info.start_time), "ended": _time(info.end_time)}
    for key, value in rows.items():
        if value not in (None, ""):
            print(f"{key + ':':14}{value}")
    return 0


def job_logs(options: argparse.Namespace) -> int:
    """Print the job's logs so far, or follow them (--follow) until it ends."""
    client, _ = _job(options)
    if options.follow:
        return follow(client, options.job, client.get_address())
    sys.stdout.write(client.get_job_logs(options.job))
    return 0


def job_stop(options: argparse.Namespace) -> int:
    """Ask the cluster to stop the job (its trials stop with it)."""
    client, info = _job(options)
    if client.stop_job(options.job):
        _note(f"stopping {options.job}; `status {options.job}` shows when it has STOPPED")
    else:
        _note(f"{options.job} had already ended ({info.status}); nothing to stop")
    return 0


def _job(options: argparse.Namespace):
    """(client, JobDetails) of options.job; an unknown job is a user error."""
    address = dashboard_address(options.address)
    client = connect(address)
    try:
        return client, client.get_job_info(options.job)
    except RuntimeError as error:
        if "404" not in str(error) and "does not exist" not in str(error):
            raise
        raise UserError(f"There is no job {options.job} on the cluster at {address}; list "
                        f"jobs with `ray job list --address {address}`.") from None


def _time(milliseconds: int | None) -> str:
    return datetime.fromtimestamp(milliseconds / 1000).isoformat(" ", "seconds") \
        if milliseconds else ""


def _first_line(text) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


def _note(text: str) -> None:
    print(f"tune_p7.submit: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tune_p7.submit",
        usage="%(prog)s --address http://HEAD:8265 [options] -- <sweep arguments>\n"
              "       %(prog)s status|logs|stop JOB [--address http://HEAD:8265]",
        description="Run python -m tune_p7.sweep on a Ray cluster as a Ray Job. Arguments "
                    "after -- go to the sweep; --data/--space/--storage-path are checked to "
                    "be reachable from the cluster. See docs/cluster.md.")
    _address_option(parser)
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="stream the job's logs and exit with its outcome (default), or "
                             "print the job id and return")
    parser.add_argument("--name", help="sweep folder name (default p7-<date>-<time>)")
    parser.add_argument("--storage-path",
                        help="folder that receives the sweep folder, on storage this machine "
                             "and every node mount (default ./results: a cluster on this "
                             "machine only)")
    parser.add_argument("--runtime-env", metavar="FILE",
                        help="YAML runtime_env fields for the job, e.g. pip or env_vars "
                             "(deploy/runtime-env.yaml)")
    parser.add_argument("--remote-storage", action="store_true",
                        help="--storage-path is a folder only the cluster mounts: check it "
                             "there, not here (read the results on the cluster)")
    parser.add_argument("--entrypoint-num-cpus", type=float, default=0,
                        help="CPUs reserved for the sweep's driver; 0 (default) runs it on "
                             "the head node without taking a CPU from the trials")
    return parser


def build_job_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tune_p7.submit",
                                     description="Inspect or stop a submitted sweep job.")
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {"status": "print the job's status and sweep folder",
             "logs": "print the job's logs", "stop": "stop the job"}
    for command, text in helps.items():
        sub = commands.add_parser(command, help=text, description=text)
        sub.add_argument("job", help="the job id printed by submit (raysubmit_...)")
        _address_option(sub)
        if command == "logs":
            sub.add_argument("--follow", action="store_true",
                             help="keep streaming until the job ends; exit with its outcome")
    return parser


def _address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address",
                        help="the head node's dashboard, http://HEAD:8265 (default: "
                             "RAY_API_SERVER_ADDRESS, then RAY_ADDRESS)")


JOB_ACTIONS = {"status": job_status, "logs": job_logs, "stop": job_stop}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in JOB_COMMANDS:
            options = build_job_parser().parse_args(argv)
            return JOB_ACTIONS[options.command](options)
        split = argv.index("--") if "--" in argv else len(argv)
        return submit(build_parser().parse_args(argv[:split]), argv[split + 1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    command.run(main)
