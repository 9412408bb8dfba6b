#!/usr/bin/env bash
# The GPU table of docs/performance.md in one command (~5 min on an H200; under 10):
#
#   benchmarks/gpu.sh [OUT_DIR]        (default runs/gpu)
#
# 1. parity first: lmtransfer's fp32 MLM logits against PyTorch transformers' on the same
#    BERT-base weights (stops here if they differ);
# 2. BERT-base and BERT-large MLM pretraining steps at seq 128 and 512, bf16 compute with fp32
#    master weights, MFU against the device's bf16 peak (lmtransfer.perf.PEAK_FLOPS);
# 3. a GLUE fine-tuning step (BERT-base sequence classifier, batch 32 x 128, bf16);
# each beside the PyTorch peer (torch.autocast bf16, AdamW) timed in the same process. Writes
# OUT_DIR/<run>.json (lmtransfer.bench --json) and OUT_DIR/gpu.md (all tables).
# Needs jax with CUDA, flax, optax, torch, transformers, safetensors: nothing is built here.
# SIZE=tiny runs the same sequence on the tiny preset and small shapes (its CPU test).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Two frameworks share the GPU: JAX must not grab 75% of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
if [[ ${SIZE:-full} == tiny ]]; then
  base=tiny large=tiny short=16 long=32 b_base=4,2 b_large=4,2 b_glue=4 steps=1
else  # ~32k tokens per BERT-base step, ~16k per BERT-large step, at either length
  base=bert-base large=bert-large short=128 long=512 b_base=256,64 b_large=128,32 b_glue=32
  steps=20
fi

bench() {  # bench NAME ARGS...: one lmtransfer.bench run, its table and its JSON
  local name=$1
  shift
  echo "## $name: lmtransfer.bench $*" | tee "$out/$name.md"
  "$py" -m lmtransfer.bench --steps "$steps" --json "$out/$name.json" "$@" | tee -a "$out/$name.md"
}

"$py" - <<'PY' | tee "$out/gpu.md"
import jax, torch, transformers
print(f"# lmtransfer GPU benchmark: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
      f"torch {torch.__version__}, transformers {transformers.__version__}\n")
PY
bench mlm-base --model "$base" --head mlm --dtype bfloat16 --batch "$b_base" \
  --lengths "$short,$long" --parity 2e-3
bench mlm-large --model "$large" --head mlm --dtype bfloat16 --batch "$b_large" \
  --lengths "$short,$long"
bench glue-base --model "$base" --head classification --dtype bfloat16 --batch "$b_glue" \
  --lengths "$short"
for f in mlm-base mlm-large glue-base; do
  cat "$out/$f.md" >> "$out/gpu.md"
  echo >> "$out/gpu.md"
done
echo "wrote $out/gpu.md"
