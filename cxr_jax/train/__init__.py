"""Fine-tuning trainer: `train_and_evaluate(config, workdir)`. Kept models are read with
`cxr_jax.checkpoint.load_trained` (below both training and evaluation).

`train_and_evaluate` loads its module on first use (`cxr_jax.lazy`): the trainer imports the input
pipeline (TensorFlow), checkpoints and metrics, which the train step (`cxr_jax.train.step`, the
benchmarks, an accelerator without TensorFlow) does not need."""

from cxr_jax import lazy

_HOMES = {"train_and_evaluate": "trainer"}
__getattr__, __dir__, __all__ = lazy.attach(__name__, _HOMES)
