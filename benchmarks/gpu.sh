#!/usr/bin/env bash
# The GPU figures of the README in one run: the CUDA tests, the checklist on this repository's targets, and the
# memory, instrument-overhead and checklist-cost benchmarks on the GPU. Run from the repository root on a CUDA
# machine where python3 has torch, rich, pandas, matplotlib and pytest:  bash benchmarks/gpu.sh [OUT_DIR]
set -u
out=${1:-${OUT:-benchmarks/out/gpu}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, platform; print('torch', torch.__version__, 'python', platform.python_version())"; } \
  2>&1 | tee "$out/gpu.txt"
timeout 120 $py -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/tests.txt"
timeout 60 $py -m babysitter check --device cuda --no-report 2>&1 | tee "$out/check.txt"
timeout 120 $py benchmarks/memory.py --device cuda --modes all,lr_range,overfit_batch,dead_relu,batch_independence 2>&1 | tee "$out/memory.txt"
timeout 100 $py benchmarks/instrument_overhead.py --device cuda --batch-scales 1,16 --repeats 7 2>&1 | tee "$out/overhead.txt"
timeout 150 $py benchmarks/checklist_cost.py --device cuda --repeats 3 --skip-scaling 2>&1 | tee "$out/cost.txt"
# torchrun over NCCL needs a GPU per rank (NCCL refuses two ranks on one device): only with 2 GPUs or more
if [ "$($py -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  timeout 300 $py benchmarks/distributed_cost.py --device cuda --nproc 2 --repeats 2 --out "$out/distributed_cost.json" \
    2>&1 | tee "$out/distributed.txt"
else
  echo "one GPU: the NCCL figures of benchmarks/distributed_cost.py need two" | tee "$out/distributed.txt"
fi
