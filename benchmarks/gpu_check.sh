#!/usr/bin/env bash
# The issue-5 GPU check, one prepared script: the saliency benchmark with conv_impl auto (= lax off-CPU) on the
# paper's models at batch 512, M = 3, plus streamed first-order at M = 256.
#   bash benchmarks/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_smi.txt"
python3 -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
python3 benchmarks/saliency.py --models=vgg16,resnet20 --batch_sizes=512 --steps=3 \
  --modes=train_step,exact,first_order,streamed --conv_impls=auto --repeats=5 --timeout=150 \
  --out="$out/gpu_m3.json" 2>&1 | grep -v '^measuring'
python3 benchmarks/saliency.py --models=vgg16 --batch_sizes=512 --steps=256 --modes=streamed \
  --conv_impls=auto --repeats=2 --timeout=150 --out="$out/gpu_streamed_m256.json" 2>&1 | grep -v '^measuring'
