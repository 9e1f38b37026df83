#!/usr/bin/env bash
# The model engine on a CUDA host (run from the repository root; python3 with torch and CUDA):
#   1. `bench engine` of the 1b model in bfloat16 (the GPU figures: prefill tokens/s by batch
#      and context, decode step time by batch and context, copy submission cost, what
#      layer-wise loading hides);
#   2. `bench engine` of the small model in bfloat16, `calibrate engine` on it, and
#      `fidelity --engine model` on the calibrated preset: the simulator against live runs
#      whose engines compute that model on the GPU (the prefill and the decode node share
#      the one GPU), for the dualpath and pe_only policies.
# Usage: bash scripts/gpu_engine.sh OUTDIR [fidelity]   (fidelity: part 2 only)
set -uo pipefail
out=${1:?usage: gpu_engine.sh OUTDIR}
mkdir -p "$out"
cli="python3 -m experiments.cli"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
[[ ${2:-all} == fidelity ]] || timeout 270 $cli bench engine --size 1b --dtype bfloat16 \
  --device cuda --block-tokens 1024 --sweep medium --out "$out/engine-1b-bf16.json" > "$out/engine-1b-bf16.txt" 2>&1
echo "bench 1b: rc $?"
timeout 120 $cli bench engine --size small --dtype bfloat16 --device cuda --block-tokens 1024 \
  --sweep medium --out "$out/engine-small-bf16.json" > "$out/engine-small-bf16.txt" 2>&1
echo "bench small: rc $?"
$cli calibrate engine --measurements "$out/engine-small-bf16.json" \
  --out "$out/small-bf16.toml" --base tiny > "$out/calibrate-small.txt" 2>&1
echo "calibrate: rc $?"
timeout 300 $cli fidelity --engine model --device cuda --model-size small \
  --model-dtype bfloat16 --no-token-check --preset "$out/small-bf16.toml" \
  --set block_tokens=1024 --agents 4 --gen-scale 0.1 --runs 1 --json > "$out/fidelity.json" \
  2> "$out/fidelity.err"
echo "fidelity: rc $?"
tail -5 "$out/fidelity.err"
