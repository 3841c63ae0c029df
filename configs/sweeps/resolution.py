"""Zhao et al.'s resolution question: VGG16-FT2 at 128, 224, 448 and 800 px.

  python launch.py --config=configs/sweeps/resolution.py --mode=sweep --workdir=workdirs/resolution

Writes sweep.md / sweep.csv and sweep_image_size.png (COVID accuracy against image size). The GAP
head keeps the model the same size at every resolution (a flatten head would grow with the image
and confound size with capacity). 448 and 800 px take days on a CPU; limit the sweep with
--config.experiment.grid='data.image_size=128,224' there.
"""

from configs import vgg16_ft2


def get_config():
  c = vgg16_ft2.get_config()
  c.model.head = "gap"
  c.experiment.grid = "data.image_size=128,224,448,800"
  return c
