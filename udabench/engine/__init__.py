"""The training engine: trainer loop, evaluator, checkpoints, run directories."""
