"""deploy/ recipes and docs/cluster.md: they parse, and the commands they run are real.

Every `python -m tune_p7.sweep` / `python -m tune_p7.submit` command line found in a recipe
or in the cluster docs is parsed with the real argument parsers, so a renamed flag breaks
these tests, not a researcher's cluster run.
"""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import ray
import yaml
from jsonschema import validate

from tune_p7 import submit, sweep

PROJECT = Path(submit.__file__).resolve().parent.parent
DEPLOY = PROJECT / "deploy"
SWEEP_COMMAND = "python -u -m tune_p7.sweep"


def sweep_arguments(command: str) -> list[str]:
    """The arguments of one sweep command line, shell variables kept as literal values."""
    assert command.startswith(SWEEP_COMMAND), command
    words = shlex.split(command.replace('"$@"', ""), comments=True)
    return words[len(SWEEP_COMMAND.split()):]


def parses_as_sweep(arguments: list[str]) -> dict:
    """The sweep's parsed options (argparse exits with 2 on an unknown or bad flag)."""
    return vars(sweep.build_parser().parse_args(arguments))


def command_lines(text: str, start: str) -> list[str]:
    """Lines that begin with ``start`` (after a '#' or '$' prompt), continuations joined."""
    lines = [line.lstrip("#$ ").rstrip() for line in text.splitlines()]
    commands = []
    for index, line in enumerate(lines):
        if line.startswith(start):
            command = line
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + " " + lines[index].strip()
            commands.append(command)
    return commands


def test_ray_up_config_is_valid_and_keeps_the_dashboard_on_loopback():
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    validate(config, schema)  # what `ray up` checks first
    node_types = config["available_node_types"]
    assert node_types[config["head_node_type"]]["node_config"]["InstanceType"].startswith("m5.")
    assert node_types["gpu_worker"]["node_config"]["InstanceType"].startswith("g5.")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for commands in (head_start, " ".join(config["worker_start_ray_commands"])):
        assert "export RAY_AUTH_MODE=token" in commands
    assert config["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    assert "-v /mnt/sweeps:/mnt/sweeps" in config["docker"]["run_options"]
    assert "/mnt/sweeps" in " ".join(config["initialization_commands"])


def test_ray_up_recipe_submits_a_sweep_that_parses():
    text = (DEPLOY / "ray-cluster.yaml").read_text()
    [command] = command_lines(text, "python -m tune_p7.submit")
    own, sweep_part = shlex.split(command, comments=True)[3:], []
    if "--" in own:
        own, sweep_part = own[:own.index("--")], own[own.index("--") + 1:]
    options = submit.build_parser().parse_args(own)
    assert options.remote_storage and options.storage_path == "/mnt/sweeps/results"
    assert parses_as_sweep(sweep_part)["data"] == "/mnt/sweeps/data/vectors.npz"


def test_slurm_script_is_valid_bash_and_runs_the_sweep_on_the_head_node():
    script = DEPLOY / "slurm-sweep.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --nodes=" in text
    assert re.search(r"ray start --head .*\n.*--dashboard-host=127\.0\.0\.1", text)
    assert "export RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN_PATH=" in text
    [command] = command_lines(text, SWEEP_COMMAND)
    options = parses_as_sweep(sweep_arguments(command))
    assert options["address"] == "auto"
    assert options["storage_path"] == "$STORAGE_PATH"
    assert "STORAGE_PATH=${STORAGE_PATH:-$PROJECT_DIR/results}" in text


def test_kuberay_rayjob_runs_the_sweep_on_a_shared_volume_with_token_auth():
    claim, job = yaml.safe_load_all((DEPLOY / "kuberay-rayjob.yaml").read_text())
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    options = parses_as_sweep(sweep_arguments(spec["entrypoint"]))
    assert options["address"] == "auto"
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        spec_of_pod = pod["template"]["spec"]
        [mount] = spec_of_pod["containers"][0]["volumeMounts"]
        [volume] = spec_of_pod["volumes"]
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert options["storage_path"].startswith(mount["mountPath"] + "/")
        assert options["data"].startswith(mount["mountPath"] + "/")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")


@pytest.mark.parametrize("recipe", ["runtime-env.yaml", "ray-cluster.yaml",
                                    "kuberay-rayjob.yaml"])
def test_recipes_install_every_dependency_of_the_project_but_ray(recipe):
    pyproject = (PROJECT / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    listed = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.DOTALL | re.MULTILINE)
    needed = {requirement for requirement in re.findall(r'"([^"]+)"', listed.group(1))
              if not requirement.startswith("ray")}
    assert "torch>=2.4" in needed
    text = (DEPLOY / recipe).read_text()
    assert {requirement for requirement in needed if requirement not in text} == set()


def test_runtime_env_example_is_what_submit_accepts():
    env = submit.runtime_env(PROJECT, str(DEPLOY / "runtime-env.yaml"))
    assert env["working_dir"] == str(PROJECT) and "torch>=2.4" in env["pip"]


def test_every_command_in_the_cluster_docs_parses():
    text = (PROJECT / "docs" / "cluster.md").read_text()
    sweeps = command_lines(text, SWEEP_COMMAND.replace(" -u", ""))
    submits = command_lines(text, "python -m tune_p7.submit")
    assert sweeps and submits
    for command in sweeps:
        parses_as_sweep(sweep_arguments(command.replace("python -m", "python -u -m")))
    for command in submits:
        words = shlex.split(command, comments=True)[3:]
        if words and words[0] in submit.JOB_COMMANDS:
            submit.build_job_parser().parse_args(words)
            continue
        own = words[:words.index("--")] if "--" in words else words
        submit.build_parser().parse_args(own)
        if "--" in words:
            parses_as_sweep(words[words.index("--") + 1:])
