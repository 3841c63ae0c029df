"""Lee et al. 2020's best model: VGG16 with the last 2 conv blocks fine-tuned (FT2).

The paper's recipe: ImageNet weights, CLAHE, 800x800, balanced classes, RMSprop lr 1e-5,
ReduceLROnPlateau and early stopping on validation loss, 80/20 split with 5-fold CV on train.
At 800 px a 2-core CPU needs days; use a GPU/TPU host, or configs/quickstart.py to try things.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.image_size = 800
  c.data.balance = True
  c.model.arch = "vgg16"
  c.model.trainable_blocks = 2
  c.model.head = "flatten"
  c.train.batch_size = 16
  c.train.num_epochs = 100
  return c
