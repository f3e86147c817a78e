#!/usr/bin/env bash
# The GPU benchmark set of docs/benchmarks/README.md, in two groups that each end well inside a 10-minute call.
#
#   bash scripts/gpu_benchmarks.sh blocks OUT_DIR   # block 0/3 refs (+ reference implementation), compiled, bf16
#                                                   # error; VAE decode; umT5-XXL            (about 5 minutes)
#   bash scripts/gpu_benchmarks.sh steps  OUT_DIR   # full 40-layer CFG step: batch of two, two forwards,
#                                                   # and the reference implementation      (about 6 minutes)
#   bash scripts/gpu_benchmarks.sh profiles OUT_DIR # a whole 3-reference 512x896x81 video (2 steps and the
#                                                   # decode) under each memory profile, and 24 GB with int8:
#                                                   # peak memory per stage against the traced prediction
#                                                   # (needs the full requirements: transformers, accelerate,
#                                                   # diffusers, torchao; about 8 minutes)
#
# Each run appends one JSON line to OUT_DIR/<group>.jsonl (stderr to OUT_DIR/<group>.log); a failing run is
# logged and the others go on. Afterwards: python scripts/benchmark.py table OUT_DIR/*.jsonl
# blocks and steps need only torch, einops and safetensors (no omegaconf, deepspeed or decord).
set -uo pipefail
cd "$(dirname "$0")/.."
group=${1:?usage: gpu_benchmarks.sh blocks|steps|profiles OUT_DIR}
out=${2:?usage: gpu_benchmarks.sh blocks|steps|profiles OUT_DIR}
python=${PYTHON:-python3}
size=${SIZE:-real}  # SIZE=tiny: the same runs at the CI size (a CPU check of this script)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=0

bench() {
    echo "== benchmark.py $*" | tee -a "$out/$group.log"
    if ! "$python" scripts/benchmark.py "$@" --out "$out/$group.jsonl" >/dev/null 2>>"$out/$group.log"; then
        echo "FAILED: benchmark.py $*" | tee -a "$out/$group.log"
        failed=$((failed + 1))
    fi
}

case "$group" in
    blocks)
        command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$out/$group.log" 2>&1
        bench block --size $size --refs 0 --repeats 10 --compare
        bench block --size $size --refs 3 --repeats 10 --compare
        bench block --size $size --refs 3 --repeats 10 --layers 4
        bench block --size $size --refs 3 --repeats 10 --compile
        bench block --size $size --refs 0 --repeats 10 --compile
        bench text --size $size --repeats 5
        bench vae --size $size --warmup 1 --repeats 3
        ;;
    steps)
        bench step --size $size --refs 3 --warmup 1 --repeats 3
        bench step --size $size --refs 3 --warmup 1 --repeats 3 --cfg sequential
        bench step --size $size --refs 3 --warmup 1 --repeats 2 --compare
        ;;
    profiles)
        for profile in 80 48 24; do
            bench profile --size $size --memory-profile $profile --warmup 0 --repeats 1
        done
        bench profile --size $size --memory-profile 24 --quantization int8 --warmup 0 --repeats 1
        ;;
    *)
        echo "error: group: expected blocks, steps or profiles, got '$group'" >&2
        exit 2
        ;;
esac
echo "$group: $failed failed run(s); records in $out/$group.jsonl"
exit $((failed > 0))
