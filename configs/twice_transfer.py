"""Bassi & Attux 2022: DenseNet121, ImageNet -> NIH ChestX-ray14 findings -> COVID ("twice
transfer"), with output neuron keeping, compared with single transfer.

  python launch.py --config=configs/twice_transfer.py --workdir=W --mode=twice_transfer
  python launch.py --config=configs/twice_transfer.py:cpu --workdir=W --mode=twice_transfer

One command trains stage 1 (the 14 NIH findings + No Finding, multi-label, on the NIH images
only, never a patient of the COVID test split), then stage 2 three ways: single (ImageNet ->
COVID), twice (stage 1 -> COVID, new head) and twice_onk (stage 1 -> COVID, the pneumonia and
normal output neurons keep stage 1's Pneumonia and No Finding weights); it writes
twice_transfer.md, twice_transfer.json and learning_curves.png.

ImageNet DenseNet121 weights: `python -m cxr_jax.weights fetch densenet121` (torchvision's, hash
checked), or `--file` with a downloaded copy.

Argument `cpu`: the 2-core-CPU version used for results/twice_transfer_vgg16_112px: VGG16 with its
real ImageNet weights instead of DenseNet121 (see below), 112 px, fine-tuning degree 1, 5 epochs
per stage; stage 1 uses cxr3's NIH images (their NIH findings strings).
"""

import ml_collections

from configs import default


def get_config(arg: str = ""):
  c = default.get_config()
  c.model.arch = "densenet121"
  c.model.head = "gap"              # DenseNet's own classifier: global pooling + one dense layer,
  c.model.hidden = ()               # so an output neuron is one column of that layer
  c.model.trainable_blocks = 5
  c.model.keep_neurons = ("pneumonia:Pneumonia", "normal:No Finding")
  c.data.image_size = 224
  c.data.balance = True
  c.train.optimizer = "adam"
  c.train.learning_rate = 1e-4
  c.train.batch_size = 16
  c.train.eval_batch_size = 32
  c.train.num_epochs = 30
  c.train.early_stopping_patience = 5
  c.train.plateau_patience = 2
  c.explain.layer = "features"      # norm5 + ReLU, the usual DenseNet CAM layer
  c.experiment.variants = ("single", "twice", "twice_onk")
  c.experiment.stage1 = ml_collections.ConfigDict({"num_epochs": 30})
  if arg == "cpu":
    # DenseNet121 trains at ~0.3 img/s at 96 px on a 2-core CPU (many small convolutions,
    # train-mode BatchNorm) and has no ImageNet weights here; VGG16 has real ones. The method is
    # the same: ImageNet -> NIH -> COVID, a one-layer head whose columns are the output neurons.
    c.model.arch = "vgg16"
    c.model.trainable_blocks = 1      # block5 + head train in both stages; blocks 1-4 come from
    c.train.feature_cache = True      # ImageNet, so stage 2 trains on cached block4 features
    c.train.optimizer = "rmsprop"
    c.data.image_size = 112
    c.train.num_epochs = 5
    c.train.early_stopping_patience = 3
    c.train.plateau_patience = 1
    c.experiment.stage1.num_epochs = 5
    c.explain.layer = "block5/conv3"
  elif arg:
    raise ValueError(f"configs/twice_transfer.py: unknown argument {arg!r} (use cpu or nothing)")
  return c
