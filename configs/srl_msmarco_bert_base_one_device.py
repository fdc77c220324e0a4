"""The paper's retrieval setup (configs/srl_msmarco_bert_base.py) on a single accelerator, through GradCache.

    python -m starbucks_jax.train --config configs/srl_msmarco_bert_base_one_device.py --workdir runs/srl_msmarco

The same objective, batch and gradients as the pod config (128 queries x 8 passages, every passage of the
batch a negative for every query), with the encoder's activations of 16 queries and their 128 passages
at a time (training/grad_cache.py): each step runs the forward pass twice, so it costs about 1.3x the
FLOPs. Check what a device must hold before a run with --dry_run (it prints the memory with and without
GradCache). The same on the pod config: --config.grad_cache.query_chunk=16.
Expected result: as configs/srl_msmarco_bert_base.py; not yet run here (no accelerator in these sessions).
"""

import os
import runpy

POD_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "srl_msmarco_bert_base.py")


def get_config():
  c = runpy.run_path(POD_CONFIG)["get_config"]()
  c.grad_cache.query_chunk = 16  # and its 128 passages: 8 chunks a step
  return c
