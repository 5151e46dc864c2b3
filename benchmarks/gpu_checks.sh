#!/bin/bash
# The GPU checks of one device session, in one command (the device tool's `run`; see README "Limitations").
#   here:  bash benchmarks/gpu_checks.sh prepare   # FashionMNIST from $L2O_DATA_DIR (../shared/data), gzipped,
#                                                  # into .gpu_carry/ (git-ignored through .git/info/exclude)
#   there: bash benchmarks/gpu_checks.sh           # run with carry [".gpu_carry"], timeout_s 560
# Writes gpu_step_cuda.md and optimizee_batching_cuda.md with their logs to $OUT (benchmarks/results/ without it).
set -u
CARRY=.gpu_carry
if [ "${1:-}" = prepare ]; then
    grep -qx "/$CARRY/" .git/info/exclude || echo "/$CARRY/" >> .git/info/exclude
    mkdir -p $CARRY/data/FashionMNIST/raw
    for f in "${L2O_DATA_DIR:-../shared/data}"/FashionMNIST/raw/*-ubyte; do
        gzip -c "$f" > $CARRY/data/FashionMNIST/raw/"$(basename "$f")".gz
    done
    du -sh $CARRY
    exit
fi
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 L2O_DATA_DIR=$PWD/$CARRY/data
gunzip -f $L2O_DATA_DIR/FashionMNIST/raw/*.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee $OUT/gpu_env.log
python3 -c "import torch, pytorch_lightning, torch_geometric; print(torch.__version__, pytorch_lightning.__version__,
torch_geometric.__version__)" 2>&1 | tee -a $OUT/gpu_env.log
CHUNKS="--chunk-sizes 16384 262144 4194304"
timeout 110 python3 benchmarks/gpu_step.py --device cuda --params 1000000 --repeats 10 $CHUNKS 2>&1 | tee $OUT/gpu_step_1M.log
timeout 80 python3 benchmarks/optimizee_batching.py --device cuda 2>&1 | tee $OUT/optimizee_batching.log
timeout 300 python3 benchmarks/gpu_step.py --device cuda --params 100000000 --repeats 10 $CHUNKS 2>&1 \
    | tee $OUT/gpu_step_100M.log
for f in gpu_step_cuda.md optimizee_batching_cuda.md; do
    [ "$OUT" = benchmarks/results ] || cp benchmarks/results/$f $OUT/ 2>/dev/null
done
