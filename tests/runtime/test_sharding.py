"""The same SRL and SMAE losses and gradients on 1 device and on 8 (fake CPU) devices: cross-device
negatives and the token means of the masked-LM losses come from sharding the global batch, so the numbers
must not depend on the device count."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("sharding_probe.py")


# "fsdp": the 8 devices as data=2 x fsdp=4, parameters and Adam state sharded by the FSDP rules. Two cases
# run other families through the registry: RoBERTa (its positions and axes) and ModernBERT (rotary
# positions, sliding windows, no biases; its SMAE decoder and bias-free MLM head). BERT's SMAE differs from
# ModernBERT's only in the family's functions, which BERT's SRL cases shard. Dropout off is the (0.0, 2) case;
# plain data parallelism the 2dmse case and test_multihost.py's runs.
@pytest.mark.parametrize("dropout, accum, mode, layout, family", [
    (0.1, 1, "starbucks", "fsdp", "roberta"),
    (0.0, 2, "starbucks", "fsdp", "bert"), (0.1, 1, "2dmse", "dp", "bert"), (0.1, 2, "smae", "fsdp", "modernbert")])
def test_one_and_eight_devices_agree(dropout, accum, mode, layout, family):
  out = subprocess.run([sys.executable, str(PROBE), str(dropout), str(accum), mode, layout], capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, PROBE_FAMILY=family))
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  assert result["loss_1"] > 0.1  # a real loss, not a degenerate zero
  assert result["metric_diff"] <= 1e-5, result
  assert result["grad_diff"] <= 1e-5, result
  assert result["grad_scale"] > 1e-3  # gradients are not all zero
  # Under FSDP every kernel and embedding table is split (4 per layer, 2 FFN, 2 embeddings, ...).
  assert (result["sharded_params"] >= 10) if layout == "fsdp" else result["sharded_params"] == 0


# bfloat16 on the CPU runs the dense layers through `matmul.dot`'s own VJP: it must partition under FSDP
# like any op. bfloat16 rounds the same sums in another order differently, so the two sides differ by
# bfloat16 amounts, about 1e-2 relative here, as the plain bfloat16 dot does (0.008 / 0.020 measured).
# SRL only: SMAE's MLM head goes through the same `dot` (its bfloat16 run passed too, 0.0001 / 0.0013,
# but took 67 s of the suite), and its bias gradient runs in every float32 SMAE case above.
def test_one_and_eight_devices_agree_in_bfloat16():
  out = subprocess.run([sys.executable, str(PROBE), "0.1", "2", "starbucks", "fsdp", "bfloat16"],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8 and result["sharded_params"] >= 10 and result["grad_scale"] > 1e-3
  assert result["metric_diff"] <= 0.03, result
  assert result["grad_diff"] <= 0.06, result
