"""Losses as pure functions of pooled vectors or hidden states: contrastive pieces (`contrastive.py`),
objectives (`objectives.py`), the SRL schedules (`srl_spec.py`, `srl.py`, `mse2d.py`) and SMAE (`smae.py`)."""
