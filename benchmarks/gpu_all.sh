#!/usr/bin/env bash
# Runs the CFI and DFC-Net speed benchmarks on the first GPU in under 5 minutes and writes their JSON to OUT_DIR.
#   bash benchmarks/gpu_all.sh OUT_DIR
# Needs an environment with a CUDA build of jax (pip install -e '.[torch]' 'jax[cuda12]>=0.10,<0.11') and, for the
# PyTorch comparison, a CUDA build of torch; without one it times JAX only.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${1:?usage: gpu_all.sh OUT_DIR}"
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out_dir/gpu.csv"

torch_flag=()
python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || torch_flag=(--skip_torch)
timeout 200 python benchmarks/cfi_speed.py --device=gpu --repeats=20 "${torch_flag[@]}" \
  --out_json="$out_dir/cfi_speed.json" 2>&1 | grep -v '^[IW][0-9]' | tee "$out_dir/cfi_speed.log"
timeout 90 python benchmarks/dfc_speed.py --device=gpu --repeats=20 \
  --out_json="$out_dir/dfc_speed.json" 2>&1 | grep -v '^[IW][0-9]' | tee "$out_dir/dfc_speed.log"
