"""Fine-tuning trainer: `train_and_evaluate(config, workdir)`. Kept models are read with
`cxr_jax.checkpoint.load_trained` (below both training and evaluation)."""

from cxr_jax.train.trainer import train_and_evaluate

__all__ = ["train_and_evaluate"]
