#!/usr/bin/env bash
# Multi-GPU sampling with torchrun: data parallel over prompt lines × Ulysses sequence parallel inside each video.
#
#   bash torchrun_multi_gpu.sh [key=value ...] [--seed N] [--overwrite]          one node, every visible GPU
#   bash torchrun_multi_gpu.sh --nproc-per-node 4 args.model_root=/data/Kaleido-14B-S2V
#   SP=2 bash torchrun_multi_gpu.sh ...                                          4 GPUs: 2 videos at a time, 2 GPUs each
#   NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0 address> bash torchrun_multi_gpu.sh ...   (run on every node)
#
# Environment (all optional):
#   NPROC_PER_NODE  processes (GPUs) per node; default: the visible CUDA devices, else 1 (or --nproc-per-node N)
#   SP              sequence-parallel size; default NPROC_PER_NODE (one video per node at a time, like the official
#                   run); data parallel = NNODES × NPROC_PER_NODE / SP
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node rendezvous; defaults 1, 0, 127.0.0.1, 29500
#   BASE            config files; default the 14B model with the release sampling settings
#   PYTHON          interpreter; default the repository's .venv/bin/python when present, else python
# Relative paths (prompt file, output folder, args.model_root) are relative to the directory you run it from.
# Every other argument (key=value overrides, sample_video.py flags) is passed through to sample_video.py.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)  # paths in the overrides stay relative to the caller's directory

if [ "${1:-}" = "--nproc-per-node" ]; then
    NPROC_PER_NODE=$2
    shift 2
fi
if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=${PYTHON:-$HERE/.venv/bin/python}; else PYTHON=${PYTHON:-python}; fi
if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE=$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
SP=${SP:-$NPROC_PER_NODE}
BASE=${BASE:-$HERE/configs/video_model/dit_crossattn_14B_wanvae.yaml $HERE/configs/sampling/sample_wanvae_concat_14b.yaml}

for name in NPROC_PER_NODE NNODES NODE_RANK SP; do
    value=${!name}
    if ! [[ $value =~ ^[0-9]+$ ]] || { [ "$name" != NODE_RANK ] && [ "$value" -lt 1 ]; }; then
        echo "error: $name=$value: expected a positive whole number" >&2
        exit 2
    fi
done
WORLD=$((NNODES * NPROC_PER_NODE))
if [ $((WORLD % SP)) -ne 0 ]; then
    echo "error: SP=$SP does not divide the world size $WORLD (NNODES=$NNODES × NPROC_PER_NODE=$NPROC_PER_NODE)" >&2
    exit 2
fi
echo "layout: $NNODES node(s) × $NPROC_PER_NODE process(es) = world $WORLD = data parallel $((WORLD / SP)) × sequence parallel $SP (node $NODE_RANK, rendezvous $MASTER_ADDR:$MASTER_PORT)"

# torchrun through sat/launch.py: the same options, and a failure ends with one line instead of torchrun's traceback.
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck disable=SC2086  # BASE is a list of files
exec "$PYTHON" -m sat.launch --nnodes "$NNODES" --nproc-per-node "$NPROC_PER_NODE" --node-rank "$NODE_RANK" \
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
    "$HERE/sample_video.py" --base $BASE "args.sequence_parallel_size=$SP" "$@"
