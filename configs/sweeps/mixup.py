"""Zhao et al.'s mixup question: VGG16-FT2 without mixup (alpha 0) and with mixup (alpha 0.2).

  python launch.py --config=configs/sweeps/mixup.py --mode=sweep --workdir=workdirs/mixup

Mixup mixes images before the backbone, so the frozen-feature cache is off for these runs
(the trainer falls back to ordinary training). Writes sweep_mixup_alpha.png.
"""

from configs import vgg16_ft2


def get_config():
  c = vgg16_ft2.get_config()
  c.data.image_size = 224
  c.model.head = "gap"
  c.experiment.grid = "train.mixup_alpha=0.0,0.2"
  return c
