"""What the three trainers (backbone, FaceT, Clusformer) share: learning-rate schedules, RNG state for
exact resume, and checkpoints that refuse to resume another run (other data or settings)."""
