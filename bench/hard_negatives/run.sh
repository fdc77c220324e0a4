#!/usr/bin/env bash
# Does mining help? SciFact split 700/109; MiniLM fine-tuned with Starbucks SRL (a) with in-batch negatives
# only, (b) with 7 negatives mined by the untouched model at (6, 384), (c) at (3, 64); dev nDCG@10 at every
# pair, and each mining run's wall time. Usage: bash bench/hard_negatives/run.sh [OUT] (default
# runs/hard_negatives); about 45 minutes on 2 CPU cores. Prints the table BENCHMARKS.md shows.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/hard_negatives}
PY=${PYTHON:-python}
export SCIFACT_SPLIT="$OUT/split"
$PY bench/hard_negatives/split_scifact.py --out "$SCIFACT_SPLIT"
LENGTHS=(--query-max-length 64 --passage-max-length 128)

[ -f "$OUT/untouched.json" ] || $PY -m starbucks_jax.evaluate --beir "$SCIFACT_SPLIT/dev" "${LENGTHS[@]}" \
    --output "$OUT/untouched.json"
for size in 6:384 3:64; do
  layer=${size%:*} dim=${size#*:}
  mined="$SCIFACT_SPLIT/mined_${layer}_${dim}.jsonl"
  [ -f "$mined" ] || $PY -m starbucks_jax.mine --train "$SCIFACT_SPLIT/train.jsonl" --corpus "$SCIFACT_SPLIT/dev" \
      --layer "$layer" --dim "$dim" --range-max 100 --num-negatives 7 "${LENGTHS[@]}" --output "$mined"
done

train() {  # workdir, then config overrides
  local workdir="$OUT/$1"; shift
  [ -f "$workdir/export/config.json" ] || $PY -m starbucks_jax.train --config configs/srl_scifact_minilm.py \
      --workdir "$workdir" "$@"
}
train in_batch --config.data.source="$SCIFACT_SPLIT/train.jsonl" --config.data.train_group_size=1
train mined_6_384 --config.data.source="$SCIFACT_SPLIT/mined_6_384.jsonl"
train mined_3_64 --config.data.source="$SCIFACT_SPLIT/mined_3_64.jsonl"
$PY bench/hard_negatives/report.py "$OUT"
