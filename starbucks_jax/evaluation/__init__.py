"""Evaluation at every (layer, dim) size: the evaluators (`sts.py`, `retrieval.py`) and their registry,
their data sets, the runner, and the reports (results file, table, heatmaps)."""
