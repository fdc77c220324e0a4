#!/usr/bin/env bash
# The GPU check of the training steps, with and without sequence packing, and of the custom bf16 dot.
#
#   bash bench/device_check.sh              # on the GPU machine (one H200): BERT-base, bfloat16, < 8 minutes
#   SMALL=1 bash bench/device_check.sh      # on the CPU (the default where JAX sees no GPU): tiny shapes
#
# Runs, each its own process (`bench/srl_step.py`, `bench/smae_step.py`, variant jax), in this order:
#   srl_packed    SRL at the MS MARCO shape: 128 queries x 8 passages, cut at 32 / 196 tokens, lengths drawn
#                 from bench/lengths (MS MARCO dl19 slice), packed in rows of 196 (as many as first-fit needs)
#   srl_padded    the same batch padded as the trainer pads it (each side to its bucket), with --remat on the
#                 GPU (SRL_PADDED_REMAT=0 to try without): an XLA:CPU compile of this step (custom dot off)
#                 asked for 214 GiB of temporaries without it, the H200 has 141 GiB
#   smae_packed   SMAE, 32 texts (SMAE_BATCH) cut at 512 tokens, lengths drawn from SciFact abstracts, 0.2 / 0.4
#                 masking as in training, packed in rows of 512
#   smae_padded   the same batch padded (to 512, its bucket)
#   srl_dot, smae_dot   the packed steps again with the custom bf16->f32 dot (starbucks_jax/model/dense.py)
#                 switched the other way from its default here (GPU: on; CPU: off), to say which is faster
# A run that fails out of memory is retried once with --remat (its name gets _remat).
# SMALL: SRL on MiniLM (the packaged model) 8 x 4 at 32 / 64; SMAE on a tiny random BERT (2 layers, hidden 128)
# 4 x 128; 2 timed steps, no memory runs.
#
# Each row prints step time (median), examples/s, real tokens/s, padding ratio, the model FLOPs of the shapes
# actually executed (starbucks_jax/training/flops.py) and MFU against the bf16 dense peak (H200: 989 TFLOP/s;
# CPU: the measured bf16 matmul rate), plus the useful FLOPs (real tokens only) and their MFU.
# Rows go to $OUT/rows.jsonl when OUT is set, else to bench/results/device_check_<date>/rows.jsonl, with
# each run's printout beside them; a summary ends the output.
#
# Time (GPU): the runs stop being started once BUDGET_S (default 420 s) has passed since the start, each
# is cut at what is left of it (and at RUN_CAP_S, default 200 s), so the script ends within about
# BUDGET_S + 20 s. Compiles are cached in ${JAX_COMPILATION_CACHE_DIR:-/tmp/starbucks_jax_cache}: a rerun on the
# same machine compiles (and reports compile times) much faster. Needs the repo's Python environment with
# a CUDA jax; no PyTorch on the GPU (the weights are written by the CPU torch wheel once, under /tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
START=$SECONDS

out_dir="${OUT:-bench/results/device_check_$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out_dir"
rows="$out_dir/rows.jsonl"
: > "$rows"
status_file="$out_dir/runs.txt"
: > "$status_file"

echo "== device_check: $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "$(git status --porcelain 2>/dev/null | grep -q . && echo '(uncommitted changes)')"
if command -v nvidia-smi > /dev/null; then
  timeout 30 nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,power.limit,driver_version \
    --format=csv || true
  timeout 30 nvidia-smi -L || true
else
  echo "(no nvidia-smi)"
fi
info=$(timeout 180 "$PYTHON" -c "import jax, platform; d = jax.devices(); print(f'python {platform.python_version()}, \
jax {jax.__version__}: {len(d)} x {d[0].device_kind}, platform {d[0].platform}')" 2>/dev/null | tail -n 1) || info="(jax failed to start)"
echo "$info"
platform="${info##* }"
if [[ -z "${SMALL:-}" ]]; then
  if [[ "$platform" == "gpu" ]]; then SMALL=0; else SMALL=1; echo "JAX sees no GPU ($platform): SMALL=1, the CPU check"; fi
fi

if [[ "$SMALL" == "1" ]]; then
  budget=${BUDGET_S:-1500}; cap=${RUN_CAP_S:-600}; min_start=0
  other_dot=off   # the CPU's default (auto) is on
  srl=(bench/srl_step.py --shape minilm --dtype bfloat16 --queries 8 --group 4 --query-length 32 --length 64)
  padded_remat=()
  smae=(bench/smae_step.py --shape tiny --dtype bfloat16 --batch 4 --length 128)
  common=(--variants jax --repeats 2 --no-memory)
else
  budget=${BUDGET_S:-420}; cap=${RUN_CAP_S:-200}; min_start=${MIN_START_S:-60}
  other_dot=on    # the GPU's default (auto) is off
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/starbucks_jax_cache}"
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
  srl=(bench/srl_step.py --shape bert-base --dtype bfloat16 --queries 128 --group 8 --query-length 32 --length 196)
  smae=(bench/smae_step.py --shape bert-base --dtype bfloat16 --batch ${SMAE_BATCH:-32} --length 512)
  padded_remat=(); [[ "${SRL_PADDED_REMAT:-1}" == "1" ]] && padded_remat=(--remat)
  common=(--variants jax --repeats ${REPEATS:-10})
fi
srl+=(--query-lengths bench/lengths/msmarco_queries.json --lengths bench/lengths/msmarco_passages.json)
smae+=(--lengths bench/lengths/scifact_abstracts.json)
echo "SMALL=$SMALL, budget ${budget}s for the runs (each at most ${cap}s), rows to $rows"

last_rc=0
run() {  # run NAME ARGS...: one benchmark process, cut at the time left; its status goes to runs.txt
  local name="$1"; shift
  local left=$((budget - (SECONDS - START)))
  local limit=$((left < cap ? left : cap))
  if ((left < min_start || limit < 1)); then
    echo "== $name: skipped, ${left}s of the budget left"
    echo "$name skipped (budget)" >> "$status_file"
    last_rc=124
    return 0
  fi
  echo "== $name (at $((SECONDS - START))s, limit ${limit}s): $PYTHON $*"
  local t=$SECONDS
  set +e
  timeout -k 10 "$limit" "$PYTHON" "$@" --json "$rows" 2>&1 | tee "$out_dir/$name.txt" \
    | grep --line-buffered -v -e "Warning" -e "warnings.warn" -e "Loading weights" -e "model shards" -e "^\s*$"
  last_rc=${PIPESTATUS[0]}
  set -e
  if ((last_rc == 0)); then
    echo "$name ok $((SECONDS - t))s" >> "$status_file"
  else
    echo "$name FAILED (exit $last_rc$( ((last_rc == 124 || last_rc == 137)) && echo ', timed out')) after $((SECONDS - t))s" \
      | tee -a "$status_file"
  fi
}

check() {  # check NAME ARGS...: run, and once more with --remat if it ran out of memory
  local name="$1"; shift
  run "$name" "$@"
  if ((last_rc != 0 && last_rc != 124 && last_rc != 137)) \
      && grep -qiE "RESOURCE_EXHAUSTED|out of memory" "$out_dir/$name.txt" && [[ " $* " != *" --remat "* ]]; then
    run "${name}_remat" "$@" --remat
  fi
}

check srl_packed "${srl[@]}" "${common[@]}" --packing
remat=(); grep -q "^srl_packed_remat ok" "$status_file" && remat=(--remat)  # the dot check as the run it repeats
check srl_padded "${srl[@]}" "${common[@]}" "${padded_remat[@]}"
check smae_packed "${smae[@]}" "${common[@]}" --packing
smae_remat=(); grep -q "^smae_packed_remat ok" "$status_file" && smae_remat=(--remat)
check smae_padded "${smae[@]}" "${common[@]}"
check srl_dot "${srl[@]}" "${common[@]}" --packing --bf16-dot "$other_dot" "${remat[@]}"
check smae_dot "${smae[@]}" "${common[@]}" --packing --bf16-dot "$other_dot" "${smae_remat[@]}"

echo
echo "== summary ($((SECONDS - START))s in all; rows: $rows)"
cat "$status_file"
"$PYTHON" - "$rows" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not rows:
  sys.exit("no rows were written")
print(rows[0]["machine"])
print(f"{'run':<26} {'layout':<24} {'step s':>7} {'ex/s':>7} {'tok/s':>9} {'pad':>6} {'GFLOP':>8} {'MFU':>6} "
      f"{'useful':>7} {'compile':>8} {'peak MiB':>9}")
for r in rows:
  name = f"{r['bench'].split('_')[0]} {'packed' if r['packed'] else 'padded'} dot {r['bf16_dot']}"
  name += " remat" if "--remat" in r["command"] else ""
  peak = "" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
  print(f"{name:<26} {r['layout']:<24} {r['step_s']:>7.3f} {r['examples_per_s']:>7.1f} {r['tokens_per_s']:>9.0f} "
        f"{100 * r['padding_ratio']:>5.1f}% {r['model_gflop']:>8.1f} {100 * r['mfu']:>5.1f}% "
        f"{100 * r['useful_mfu']:>6.1f}% {r['compile_s']:>7.1f}s {peak:>9}")
peaks = sorted({round(r["gflops_per_s"] / r["mfu"]) for r in rows})
print(f"tok/s: real tokens; GFLOP and MFU: the shapes executed (padding included); useful: the MFU of the real "
      f"tokens' FLOPs alone; peak {', '.join(map(str, peaks))} GFLOP/s")
for bench in ("srl_step", "smae_step"):
  mine = [r for r in rows if r["bench"] == bench]
  packed = [r for r in mine if r["packed"] and r["bf16_dot"].startswith("auto")]
  padded = [r for r in mine if not r["packed"] and r["bf16_dot"].startswith("auto")]
  if packed and padded:
    a, b = packed[-1], padded[-1]
    remat = {k: "--remat" in r["command"] for k, r in (("packed", a), ("padded", b))}
    note = "" if remat["packed"] == remat["padded"] else (
        "; only the " + next(k for k, v in remat.items() if v) + " step recomputes its layers (--remat)")
    print(f"{bench}: packing gives {a['examples_per_s'] / b['examples_per_s']:.2f}x the examples/s "
          f"({b['step_s']:.3f} -> {a['step_s']:.3f} s a step; padding {100 * b['padding_ratio']:.0f}% -> "
          f"{100 * a['padding_ratio']:.0f}%{note})")
  dots = {r["bf16_dot"].split("->")[1]: r for r in mine if r["packed"]}
  if "on" in dots and "off" in dots:
    on, off = dots["on"]["step_s"], dots["off"]["step_s"]
    default = next(k for k, r in dots.items() if r["bf16_dot"].startswith("auto"))
    verdict = "on" if on < off else "off"
    print(f"{bench} packed, custom bf16 dot: on {on:.3f} s, off {off:.3f} s a step; {verdict} is "
          f"{max(on, off) / min(on, off):.2f}x as fast (auto gives {default} here"
          + (": keep it)" if verdict == default else f": the dot should be {verdict} here)"))
EOF
