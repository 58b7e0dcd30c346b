#!/bin/bash
# tune_p7 sweep on a SLURM allocation: a Ray head on the first node, Ray workers on the
# others, the sweep's driver on the head (`--address auto`), results on shared storage.
# Explained in docs/cluster.md ("SLURM"). Submit from the tune_p7 checkout, whose .venv
# (pip install -e '.[cluster]') and results/ folder every node must see (shared home or
# scratch); extra arguments go to the sweep:
#
#   sbatch deploy/slurm-sweep.sh
#   sbatch --export=ALL,SWEEP_NAME=p7-k7,DATA=/scratch/me/vectors.npz deploy/slurm-sweep.sh --profile quick
#
#SBATCH --job-name=tune-p7
#SBATCH --nodes=3
#SBATCH --exclusive
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=1
#SBATCH --time=04:00:00
#SBATCH --output=tune-p7-%j.log

set -euo pipefail

PROJECT_DIR=${PROJECT_DIR:-$SLURM_SUBMIT_DIR}         # the checkout, on shared storage
STORAGE_PATH=${STORAGE_PATH:-$PROJECT_DIR/results}    # the sweep folder lands here: shared!
DATA=${DATA:-default}                                 # .npz on shared storage, or default
SWEEP_NAME=${SWEEP_NAME:-p7-slurm-$SLURM_JOB_ID}

cd "$PROJECT_DIR"
source .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0

# Token authentication: a fresh token for this job, readable only by you, in your (shared)
# home so that Ray on every node finds it through RAY_AUTH_TOKEN_PATH; gone after the job.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$HOME/.ray/tune-p7-$SLURM_JOB_ID.token"
mkdir -p "$HOME/.ray"
(umask 077 && python -c "import secrets; print(secrets.token_hex(32))" >"$RAY_AUTH_TOKEN_PATH")

# The steps below run `ray start --block`: ending a step ends that node's Ray.
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait || true
  rm -f "$RAY_AUTH_TOKEN_PATH"
}
trap cleanup EXIT

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
port=$((20000 + SLURM_JOB_ID % 10000))      # outside Ray's worker ports 10002-19999
export RAY_ADDRESS="$head_ip:$port"         # what --address auto connects to
ray_options=(--block --num-cpus="$SLURM_CPUS_PER_TASK" --temp-dir="/tmp/ray-$SLURM_JOB_ID"
             --disable-usage-stats)         # GPUs: Ray counts what SLURM gives each step

# The dashboard (Ray Jobs API) stays on the head's loopback: nobody else on the cluster
# network can submit code to this Ray (reach it with ssh -L 8265:127.0.0.1:8265 HEAD).
srun --nodes=1 --ntasks=1 -w "$head_node" \
  ray start --head --node-ip-address="$head_ip" --port="$port" \
  --dashboard-host=127.0.0.1 "${ray_options[@]}" &
head_step=$!
until ray status >/dev/null 2>&1; do
  kill -0 "$head_step" 2>/dev/null || { echo "error: the Ray head did not start" >&2; exit 1; }
  sleep 5
done

for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" ray start --address="$RAY_ADDRESS" "${ray_options[@]}" &
done
python - "${#nodes[@]}" <<'PY'
import sys, time, ray
ray.init(address="auto", logging_level="ERROR")
wanted, deadline = int(sys.argv[1]), time.time() + 600
while (alive := sum(node["Alive"] for node in ray.nodes())) < wanted:
    if time.time() > deadline:
        sys.exit(f"only {alive} of {wanted} Ray nodes joined within 10 minutes")
    time.sleep(5)
PY

python -u -m tune_p7.sweep --address auto \
  --storage-path "$STORAGE_PATH" --name "$SWEEP_NAME" --data "$DATA" \
  --profile full --cpus-per-trial 4 --gpus-per-trial 0.25 "$@"
