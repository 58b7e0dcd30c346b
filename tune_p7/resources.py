"""Does one trial fit on a node? Checked against the Ray cluster before any trial starts.

    bundle = trial_bundle(cpus=4, gpus=0.5, memory_gib=0)   # {"CPU": 4, "GPU": 0.5}
    check_trial_fits(bundle, address=None, wait_seconds=0)   # ResourceError: one sentence

Ray Tune queues a trial that asks for more than any node has and waits for it, silently and
forever: on a laptop ``--cpus-per-trial 4`` with 2 CPUs, or ``--gpus-per-trial 0.5`` without
a GPU, never starts. A trial is one placement-group bundle, so it must fit on ONE node; the
check compares the bundle with every alive node's total resources (``ray.nodes()``, not
what is free now: running work ends, a missing CPU never comes).

On a local Ray nothing will join, so a trial that does not fit is refused at once. On a
cluster (``--address``) an autoscaler may add a node: the sweep says what is missing, asks
the autoscaler for one trial's bundle (``ray.autoscaler.sdk.request_resources``, a no-op
without an autoscaler) and polls for ``--resource-wait`` seconds before it gives up.
"""

from __future__ import annotations

import time

import ray
from ray.autoscaler.sdk import request_resources

GIB = 1024 ** 3
POLL_SECONDS = 2.0
# Ray's resource name -> (the flag that sets it, its unit in sentences, bytes per unit).
FLAGS = {"CPU": ("--cpus-per-trial", "CPUs", 1), "GPU": ("--gpus-per-trial", "GPUs", 1),
         "memory": ("--memory-per-trial", "GiB of memory", GIB)}


class ResourceError(ValueError):
    """No node can hold one trial; the message is one sentence naming flag, ask and supply."""


def trial_bundle(cpus: int, gpus: float, memory_gib: float) -> dict[str, float]:
    """One trial's resources under Ray's names (CPU, GPU, memory in bytes), zeros left out:
    what ``tune.with_resources`` reserves and what one node must hold."""
    bundle = {"CPU": cpus, "GPU": gpus, "memory": memory_gib * GIB}
    return {name: amount for name, amount in bundle.items() if amount}


def node_resources() -> list[dict[str, float]]:
    """The total resources of every alive node of the connected Ray cluster."""
    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def shortfall(bundle: dict[str, float], nodes: list[dict[str, float]],
              where: str = "the largest node") -> tuple[str, str] | None:
    """None when some node holds the whole bundle, else (what is missing, the fix), two
    clauses: per resource that no node has enough of, the flag, the ask and what ``where``
    (the node with the most of it) has; or, when each resource fits on some node but never
    all on one, every node's amounts."""
    if any(all(node.get(name, 0) >= amount for name, amount in bundle.items())
           for node in nodes):
        return None
    missing, fixes = [], []
    for name, amount in bundle.items():
        largest = max((node.get(name, 0) for node in nodes), default=0)
        if largest < amount:
            flag, unit, scale = FLAGS[name]
            missing.append(f"{flag} {_amount(amount, scale)} asks for "
                           f"{_amount(amount, scale)} {unit} per trial, but {where} has "
                           f"{_amount(largest, scale)}")
            fixes.append(f"{flag} to at most {_amount(largest, scale)}")
    if missing:
        return " and ".join(missing), "lower " + " and ".join(fixes)
    shapes = "; ".join(_shape(bundle, node) for node in nodes)
    flags = " or ".join(FLAGS[name][0] for name in bundle)
    return (f"no single node has {_shape(bundle, bundle)} at once (nodes: {shapes})",
            f"lower {flags} until one node holds a whole trial")


def check_trial_fits(bundle: dict[str, float], address: str | None,
                     wait_seconds: float) -> None:
    """Return once a node of the connected Ray can hold ``bundle``; raise ResourceError
    if none can: at once on a local Ray (address None), after ``wait_seconds`` of polling
    on a cluster, where an autoscaler is asked for the bundle meanwhile."""
    if address is None:
        missing = shortfall(bundle, node_resources(), where="this machine")
        if missing is not None:
            raise ResourceError(f"{missing[0]}; {missing[1]}.")
        return
    missing = shortfall(bundle, node_resources())
    if missing is None:
        return
    print(f"waiting up to {wait_seconds:g} s (--resource-wait) for a node that can hold "
          f"one trial: {missing[0]}; an autoscaler may add one.", flush=True)
    request_resources(bundles=[bundle])
    try:
        deadline = time.monotonic() + wait_seconds
        while missing is not None and time.monotonic() < deadline:
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            missing = shortfall(bundle, node_resources())
    finally:
        request_resources(bundles=[])  # the trials' own demand asks for nodes from here on
    if missing is not None:
        raise ResourceError(f"After waiting {wait_seconds:g} s (--resource-wait) no node of "
                            f"the cluster at {address} can hold one trial: {missing[0]}; "
                            f"{missing[1]}, or add a node that has it.")


def _amount(value: float, scale: float) -> str:
    """``value`` in units of ``scale``, to two decimals at most (4, 0.5, 13.41)."""
    return f"{round(value / scale, 2):g}"


def _shape(bundle: dict[str, float], node: dict[str, float]) -> str:
    """A node's (or the bundle's) amounts of the bundle's resources, e.g. "4 CPUs, 0 GPUs"."""
    return ", ".join(f"{_amount(node.get(name, 0), FLAGS[name][2])} {FLAGS[name][1]}"
                     for name in bundle)
