#!/usr/bin/env bash
# The GPU checks of issues 12-14 as one prepared script (a lent GPU has about 10 minutes of work in it):
#   1. benchmarks/structured.py: dense / masked / compact train steps, VGG-19 and ResNet-18, batch 256 (alone on the GPU);
#   2. benchmarks/matmul_precision.py: exact ProsPr VGG-16 scores and masks at default / high / highest precision;
#   3. two sweeps side by side on Fashion-MNIST, ResNet-20 and VGG-16, 10 epochs, within a wall-clock budget.
#   bash benchmarks/gpu_session.sh OUTDIR FMNIST_DIR SWEEP_MINUTES
set -uo pipefail
out=${1:-benchmarks/results}
data=${2:-/usr/share/datasets/fashion-mnist}
minutes=${3:-4.5}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_smi.txt"
python3 -c 'import jax, flax, optax, orbax.checkpoint, grain, prospr_jax; print("jax", jax.__version__, "flax",
  flax.__version__, "optax", optax.__version__, jax.devices())' || exit 3

sweep() {  # sweep MODEL: ProsPr and the baselines at 90% and 98%, seed 0 first, on its half of the GPU
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout $(( ${minutes%.*} * 60 + 150 )) python3 sweep.py \
    --config "configs/fashion_mnist_$1.py:10" --config.data_dir="$data" \
    --criteria=prospr,snip,synflow,grasp,magnitude,random --sparsities=0.9,0.98 --seeds=3 \
    --budget_minutes="$minutes" --workdir "sweeps/fashion_mnist_$1" > "$out/sweep_$1.log" 2>&1
  python3 sweep.py --config "configs/fashion_mnist_$1.py:10" --config.data_dir="$data" --aggregate_only \
    --workdir "sweeps/fashion_mnist_$1" >> "$out/sweep_$1.log" 2>&1
  tar czf "$out/sweep_$1.tgz" --exclude=checkpoints --exclude=jax_cache --exclude='*.tfevents*' "sweeps/fashion_mnist_$1"
}

timeout 170 python3 benchmarks/structured.py --batch_size=256 --repeats=10 --out="$out/structured_gpu.json" \
  2>&1 | grep -v '^{' | tee "$out/structured_gpu.txt"
sweep resnet20 & sweep vgg16 &
XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 timeout 150 python3 benchmarks/matmul_precision.py --data_dir="$data" \
  --out="$out/matmul_precision.json" 2>&1 | tee "$out/matmul_precision.txt"
wait
tail -n 25 "$out"/sweep_*.log
