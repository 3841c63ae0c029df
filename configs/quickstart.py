"""VGG16-FT2 sized for a 2-core CPU: real ImageNet weights, real cxr3 images; 3-8 minutes on 2
cores by CPU kind (README, "Two commands"; benchmarks/results/quickstart*.json).

What changes from configs/vgg16_ft2.py, and why: 128 px instead of 800 (compute is quadratic in
size), global average pooling head (the 800 px flatten head alone has 82M weights), a larger
learning rate and few epochs so that the short run gets somewhere, and the frozen-feature cache
(blocks 1-3 computed once; exact: the same metrics, measured by benchmarks/quickstart_bench.py on a
2-core AMX Xeon, train phase 315 s without, 265 s with).
"""

from configs import vgg16_ft2


def get_config():
  c = vgg16_ft2.get_config()
  c.data.image_size = 128
  c.data.balance = False
  c.model.head = "gap"
  c.train.batch_size = 16
  c.train.learning_rate = 1e-4
  c.train.num_epochs = 3
  c.train.early_stopping_patience = 3
  c.train.plateau_patience = 1
  c.train.eval_batch_size = 32
  c.train.feature_cache = True
  return c
