"""The run folder: crash-safe writes, config.yaml, checkpoints, history, resume checks, client state on disk."""
