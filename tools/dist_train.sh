#!/usr/bin/env bash
# Multi-GPU (or multi-process CPU) training: tools/dist_train.sh CONFIG NGPUS [train.py options]
set -euo pipefail
CONFIG=$1
NGPUS=$2
shift 2
PORT=${PORT:-29500}
exec python -m torch.distributed.run --nproc_per_node="$NGPUS" --master_port="$PORT" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
