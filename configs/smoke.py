"""Tiny run for tests and CI: 32 px, random init, a few steps. Seconds, says nothing about screening."""

from configs import default


def get_config():
  c = default.get_config()
  c.data.image_size = 32
  c.model.pretrained = "none"
  c.model.head = "gap"
  c.model.hidden = (16,)
  c.model.trainable_blocks = 2
  c.train.batch_size = 8
  c.train.eval_batch_size = 64
  c.train.num_epochs = 2
  c.train.steps_per_epoch = 3
  c.train.learning_rate = 1e-4
  c.train.log_every_steps = 1
  return c
