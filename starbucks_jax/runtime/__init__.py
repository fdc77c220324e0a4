"""What a run needs around the model: the device mesh and sharding, joining other processes, preemption,
Orbax checkpoints, the workdir and its model description, metrics."""
