"""Zhao et al.'s few-data question: 10, 25, 50 and 100 % of the training patient groups.

  python launch.py --config=configs/sweeps/data_fraction.py --mode=sweep --workdir=workdirs/fraction

The fraction is taken per class stratum over whole patient groups of the training folds (a
smaller fraction's groups are a subset of a larger one's); validation and test splits are the same
for every fraction, so the points are comparable. Class balancing is off (it would sample
images out of the kept groups). Writes sweep_train_fraction.png.
"""

from configs import vgg16_ft2


def get_config():
  c = vgg16_ft2.get_config()
  c.data.image_size = 224
  c.model.head = "gap"
  # Lee et al.'s balancing drops images, not groups; off so that a fraction means whole groups.
  c.data.balance = False
  c.experiment.grid = "data.train_fraction=0.1,0.25,0.5,1.0"
  return c
