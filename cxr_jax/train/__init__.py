"""Fine-tuning trainer: `train_and_evaluate(config, workdir)`; `load_trained` for inference."""

from cxr_jax.train.checkpoint import Trained, load_trained, read_config, save_trained
from cxr_jax.train.trainer import train_and_evaluate

__all__ = ["Trained", "load_trained", "read_config", "save_trained", "train_and_evaluate"]
