"""The commands: `train`, `evaluate`, `encode`, `export`, `mine` (`python -m starbucks_jax.<command>` or the
`starbucks-<command>` console scripts), and `flags.py`, the flags they share."""
