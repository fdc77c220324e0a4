"""Training: the typed config and its defaults, the tasks (`tasks/`), the optimizer, the step, the loop,
evaluation during training, export, the dry run and FLOP counts."""
