"""Ray Train jobs for the trainable models (TorchTrainer, DDP across workers, per-epoch checkpoints, resumable)."""
