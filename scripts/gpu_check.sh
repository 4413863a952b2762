#!/usr/bin/env bash
# The published-size recipes that do not fit two CPU cores, on one GPU, in about 9 minutes
# (docs/anchors.md, "A GPU path"). Writes OUT/<recipe>/ (the runs) and OUT/summary.txt.
#
#   scripts/gpu_check.sh OUT            # data under $CMAT_DATA (default ./data): cmat data fetch data
#
# 1. Madry's recipe on mnist-5split's first task: smallcnn, PGD-40 training with α = 0.01 at
#    ε = 0.3, 100 epochs (Madry et al.: 100k iterations of batch 50, ≈ 83 epochs of MNIST).
#    Five tasks would take ≈ 5× as long; one task is the measured cost and accuracy per task.
# 2. SHIELD's budget on pmnist-10 (all 10 tasks): its target network (mlp 1024-256-256), 5,000
#    iterations of batch 128 per task = 11.6 epochs of the 55,000 training images, at-individual
#    with the preset's PGD-10 at ε = 20/255; the preset evaluation (1,000 images per task).
# Each recipe has its own time limit; one that runs out is reported as such, not as a result.
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT}
export CMAT_DATA=${CMAT_DATA:-data}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
run() {  # name, seconds, cmat run arguments...
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" cmat run "$@" --device cuda --out "$OUT/$name" --force --no-progress > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc $rc, $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (time limit: no result)')" >> "$OUT/summary.txt"
    tail -n 12 "$OUT/$name.log" >> "$OUT/summary.txt"
}
: > "$OUT/summary.txt"
run madry-pgd40-mnist-task1 300 --tasks mnist-5split --method at-individual --max-tasks 1 --arch smallcnn \
    --epochs 100 --eps 0.3 --alpha 0.01 --set objective.steps=40 --set objective.eps_ramp=0.0
run shield-budget-pmnist-10 240 --tasks pmnist-10 --method at-individual --epochs 12
cat "$OUT/summary.txt"
