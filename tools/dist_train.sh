#!/usr/bin/env bash
# Multi-GPU (or multi-process CPU) training: tools/dist_train.sh CONFIG NPROC [train.py options]
set -euo pipefail
usage="usage: tools/dist_train.sh CONFIG NPROC [train.py options]
  Runs tools/train.py in NPROC processes with torchrun (--launcher pytorch): one per GPU, or
  CPU processes with gloo. PORT (default 29500) sets the rendezvous port.
  Options after NPROC go to train.py (python tools/train.py --help)."
if [[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]]; then
    echo "$usage"
    exit 0
fi
if [[ $# -lt 2 || ! $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "$usage" >&2
    echo "dist_train.sh: error: give a config and a positive number of processes." >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
PORT=${PORT:-29500}
exec python -m torch.distributed.run --nproc_per_node="$NPROC" --master_port="$PORT" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
