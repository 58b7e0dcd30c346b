"""A multi-node Ray test cluster (Ray's own ray.cluster_utils.Cluster) in a process of its own.

    python tests/ray_cluster.py HEAD_CPUS WORKER_CPUS

starts a head and one worker node and prints one JSON line: {"address": GCS address,
"raylets": {"head": pid, "worker": pid}} (a Ray worker process is a child of its node's
raylet, which is how a test tells where a trial runs). Then it obeys one command per line
on stdin, answering each with one JSON line:

    remove worker   -> {"removed": "worker"}   the node is lost: its raylet and workers killed
    add CPUS        -> {"added": raylet pid}   a node joins (what an autoscaler does)
    quit (or EOF)   -> every node is shut down and the process exits

Ray reads RAY_TMPDIR, RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH once per process, so the test
sets them in this process's environment rather than changing its own pytest process.
"""

import json
import sys

from ray._private import ray_constants
from ray.cluster_utils import Cluster


def raylet_pid(node) -> int:
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def answer(message: dict) -> None:
    print(json.dumps(message), flush=True)


def main(head_cpus: int, worker_cpus: int) -> None:
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=worker_cpus)
        answer({"address": cluster.address,
                "raylets": {"head": raylet_pid(cluster.head_node), "worker": raylet_pid(worker)}})
        for line in sys.stdin:
            command = line.split()
            if command == ["remove", "worker"]:
                cluster.remove_node(worker, allow_graceful=False)
                answer({"removed": "worker"})
            elif command[:1] == ["add"]:
                answer({"added": raylet_pid(cluster.add_node(num_cpus=int(command[1])))})
            elif command == ["quit"]:
                break
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
