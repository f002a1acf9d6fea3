#!/usr/bin/env bash
# Issue 29's GPU items as one prepared script, inside one device call (at most 600 s; this ends by TOTAL_SECONDS):
#   1. where a ResNet-20 / Fashion-MNIST cell's time goes: host input, train step, both, and the set held on the
#      device at K = 1, 52 and 468 steps per dispatch (benchmarks/throughput.py; each row printed as measured);
#   2. one 10-epoch ResNet-20 cell on the device-resident set, timed end to end (the <= 20 s target);
#   3. the grids: ResNet-20 and VGG-16, 10 epochs, prospr, snip, grasp, synflow, magnitude, random at 90%, 96.5%,
#      98.2% and 99.3%, 3 seeds, plus dense; every cell device-resident (one recipe for all criteria), PARALLEL
#      cells at once, continued from results/fashion_mnist_<model>_gpu (--import_results) and cut at a budget.
#   bash benchmarks/gpu_grids.sh OUTDIR FMNIST_DIR SWEEP_MINUTES PARALLEL
# Every step runs under one deadline (TOTAL_SECONDS, default 540, from the start), SIGKILLed 20 s after its SIGTERM,
# and each grid's results folder (rows, cell configs, tables, cell logs; no checkpoints) is copied into OUTDIR after
# every step and on exit, to commit as results/fashion_mnist_<model>_gpu. SMOKE=1 runs it all tiny, on any backend.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
data=${2:-/usr/share/datasets/fashion-mnist}
minutes=${3:-2.5}
parallel=${4:-2}
total=${TOTAL_SECONDS:-540}
epochs=10 resident=1,52,468 criteria=prospr,snip,grasp,synflow,magnitude,random sparsities=0.9,0.965,0.982,0.993
if [ "${SMOKE:-0}" = 1 ]; then epochs=runlocal resident=1,4 criteria=snip sparsities=0.9; fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
on_device=(--config.data_dir="$data" --config.data_on_device=True --config.steps_per_dispatch=52)
budget=$($py -c "import sys; print(max(0.0, float(sys.argv[1])))" "$minutes") || {
  echo "bad SWEEP_MINUTES $minutes"; exit 2; }
start=$SECONDS

run_for() {  # run_for SECONDS COMMAND...: at most SECONDS, never past the deadline less 30 s for the copies
  local limit=$1 left=$(( total - 30 - (SECONDS - start) ))
  shift
  (( limit > left )) && limit=$left
  if (( limit < 15 )); then echo "skipped, the deadline is near: $*"; return 124; fi
  timeout -k 20 "$limit" "$@"
}

copy_grid() {  # copy_grid NAME: what --import_results and the tables need, and the cell logs, into OUTDIR
  local name=$1
  [ -d "sweeps/$name" ] || return 0
  mkdir -p "$out/$name" && (cd "sweeps/$name" && find . -name checkpoints -prune -o -name jax_cache -prune -o \
    -type f \( -name '*.json' -o -name '*.jsonl' -o -name 'table.*' -o -name '*.png' -o -name '*.log' \) -print \
    | tar cf - -T -) | (cd "$out/$name" && tar xf -)
}
trap 'copy_grid fashion_mnist_resnet20_gpu; copy_grid fashion_mnist_vgg16_gpu' EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$out/gpu_smi.txt"
$py -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__, "matmul precision",
  jax.config.jax_default_matmul_precision or "default", jax.devices())' | tee "$out/versions.txt" || exit 3

run_for 150 $py benchmarks/throughput.py --config="configs/fashion_mnist_resnet20.py:$epochs" \
  --config.data_dir="$data" --resident="$resident" --seconds=3 2>&1 | tee "$out/throughput_fashion_mnist_resnet20.txt"

cell_start=$SECONDS
run_for 120 $py prune.py --config "configs/fashion_mnist_resnet20.py:$epochs" "${on_device[@]}" \
  --config.criterion=snip --config.compare_dense=False --workdir "$out/one_cell" > "$out/one_cell.log" 2>&1
echo "one cell, device-resident: exit code $?, $((SECONDS - cell_start)) s wall (process start and compiles included)" \
  | tee -a "$out/one_cell.log"

grid() {  # grid MODEL SHARE: resume the committed rows, run what is missing within SHARE of the time left, aggregate
  local name="fashion_mnist_$1_gpu" imported=() left=$(( total - 30 - 75 - (SECONDS - start) ))  # 75 s: aggregate
  local seconds=$(( left * $2 / 100 ))
  [ -f "results/$name/results.jsonl" ] && imported=(--import_results="results/$name")
  # cells start until the budget (or the share, less a cell's time) is spent; the last ones are cut by the timeout
  local minutes_now
  minutes_now=$($py -c "import sys; print(min(float(sys.argv[1]), max(0.01, (int(sys.argv[2]) - 75) / 60)))" \
    "$budget" "$seconds")
  run_for "$seconds" $py sweep.py --config "configs/fashion_mnist_$1.py:$epochs" "${on_device[@]}" \
    --criteria="$criteria" --sparsities="$sparsities" --seeds=3 --parallel_cells="$parallel" \
    --budget_minutes="$minutes_now" "${imported[@]}" --workdir "sweeps/$name" > "$out/grid_$1.log" 2>&1
  echo "grid $1: exit code $? after $((SECONDS - start)) s" | tee -a "$out/grid_$1.log"
  pkill -f "sweep.py.*--workdir sweeps/$name.*--only_cell" 2>/dev/null  # cells a killed sweep left running
  run_for 60 $py sweep.py --config "configs/fashion_mnist_$1.py:$epochs" "${on_device[@]}" --aggregate_only \
    --workdir "sweeps/$name" >> "$out/grid_$1.log" 2>&1
  copy_grid "$name"
}
grid resnet20 50
grid vgg16 100
tail -n 20 "$out"/grid_*.log
