"""The four commands: `train`, `evaluate`, `encode`, `export` (`python -m starbucks_jax.<command>` or the
`starbucks-<command>` console scripts)."""
