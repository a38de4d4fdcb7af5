"""What the three trainers (backbone, FaceT, Clusformer) share: learning-rate schedules, RNG state for
exact resume, checkpoints that refuse to resume another run (other data or settings), the settings that do not
change training, and one per-epoch record and log line."""
