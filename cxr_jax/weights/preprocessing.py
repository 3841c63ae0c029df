"""Input normalisation each ImageNet weight set was trained with.

The data pipeline turns a uint8 image `u` (grayscale replicated to 3 channels) into
  x = (u[..., order] * scale - mean) / std,   order = (2, 1, 0) if channel_order == "bgr"
where `mean`/`std` are listed in `channel_order` order.
"""

PREPROCESSING = {
    # torchvision models: RGB in [0, 1], ImageNet mean/std.
    "torchvision": dict(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                        channel_order="rgb"),
    # Keras VGG16/19 (converted from the original Caffe models): BGR in [0, 255], mean subtracted.
    "caffe": dict(scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0),
                  channel_order="bgr"),
}
