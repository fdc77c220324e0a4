#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md in turn (nothing else should run meanwhile: they time the CPU)
# and appends their rows to OUT/rows.jsonl; each script's printout goes to OUT/<name>.txt.
#   bash bench/run_all.sh [OUT]        # default OUT: bench_results/<date>
# Needs: python -m pip install torch==2.13.0 && python -m pip install -e ".[bench]", and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench_results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
run() {
  local name="$1"; shift
  echo "== $name: python $*"
  python "$@" --json "$out/rows.jsonl" 2>&1 | grep -v -e "Warning" -e "Loading weights" | tee "$out/$name.txt"
}
python bench/matmul_rate.py 2>&1 | grep -v Warning | tee "$out/matmul_rate.txt"
run srl_minilm     bench/srl_step.py --shape minilm --variants jax,torch,jax-2dmse,torch-2dmse --repeats 5
run srl_minilm_bf16 bench/srl_step.py --shape minilm --dtype bfloat16 --variants jax,torch --repeats 5
run srl_bert_base  bench/srl_step.py --shape bert-base --queries 16 --length 64 --repeats 3
run smae_minilm    bench/smae_step.py --shape minilm --batch 8 --length 128 --variants jax,jax-nogather,torch
run smae_bert_base bench/smae_step.py --shape bert-base --batch 8 --length 128 --variants jax,torch
run smae_minilm_bf16 bench/smae_step.py --shape minilm --dtype bfloat16 --variants jax,torch
run retrieval_loss bench/retrieval_loss_memory.py --queries 128 --group 8
python bench/eval_grid_speed.py --repeats 3 2>&1 | grep -v Warning | tee "$out/eval_grid.txt"
python bench/encode_throughput.py 2>&1 | grep -v -e Warning -e "Loading weights" | tee "$out/encode.txt"
python bench/checkpoint_checksum.py 2>&1 | grep -v Warning | tee "$out/checkpoint_checksum.txt"
echo "rows: $out/rows.jsonl"
