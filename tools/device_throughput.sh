#!/usr/bin/env bash
# Real-scale throughput on one accelerator (issue 25 B.7), as one prepared script: ViT-B/16,
# 64 views, 200 and 1,000 classes, TPT and MetaTPT second order, fp32 then bf16 matmuls.
# Run from the repository root on the accelerator host after `make install` (or with the
# venv carried over); results land in runs/throughput_accelerator*/ (results.json, report).
# The PyTorch loop is not run: the pinned torch is a CPU build (configs/throughput.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import jax; print(jax.devices())"
timeout 280 "$PY" -m metatpt_jax.bench.throughput --config configs/throughput.py:accelerator \
  --config.output_dir=runs/throughput_accelerator_fp32 || echo "fp32 run stopped (time limit)"
timeout 280 "$PY" -m metatpt_jax.bench.throughput --config configs/throughput.py:accelerator \
  --config.compute_dtype=bfloat16 --config.output_dir=runs/throughput_accelerator_bf16 \
  || echo "bf16 run stopped (time limit)"
# Optional (WITH_BACKBONES=1): TPT and MetaTPT on MaPLe (depth 3) and MMRL beside plain CLIP at
# 200 classes (issue 26), batches 1 and 8; docs/BACKBONES.md has the CPU figures.
if [ "${WITH_BACKBONES:-0}" = 1 ]; then
  for v in clip maple3 mmrl; do
    timeout 150 "$PY" -m metatpt_jax.bench.throughput --config configs/throughput.py:$v \
      --config.batch_sizes="(1, 8)" --config.memory_limit_gib=70 \
      --config.output_dir=runs/throughput_accelerator_$v || echo "$v run stopped (time limit)"
  done
fi
