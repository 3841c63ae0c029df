"""Entry point: python launch.py --config=configs/vgg16_ft2.py --workdir=workdirs/ft2 [--mode=...]

Modes (cxr_jax/modes.py, where each is documented once; --helpfull lists them): train, evaluate,
audit, explain, cv, ablation, sweep, loso, robustness, twice_transfer. --external=SPEC (repeatable)
also scores the kept model on a collection outside the run's data (evaluation only).
Any config field can be overridden: --config.model.trainable_blocks=3 --config.data.image_size=128;
a tuple field also as a comma-separated list: --config.data.sources=manifest:/a,folder:/b.
"""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cxr_jax import cli, modes  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
flags.DEFINE_enum("mode", "train", list(modes.MODES), modes.help_text())
flags.DEFINE_string("split", "test", "Split used by --mode=evaluate/explain.")
flags.DEFINE_enum("method", "gradcam", ["gradcam", "gradcam++", "lrp"],
                  "Heatmap method for explain.")
flags.DEFINE_multi_string(
    "external", [], "Reader spec of a collection to evaluate the kept model on after train / "
    "evaluate / audit (e.g. manifest:../shared/data/cxr-external; repeatable; appended to "
    "config.eval.external). Evaluation only: it is never trained on.")
flags.DEFINE_integer("per_class", None, "Images per class (right and wrong each) for explain; "
                     "default config.explain.per_class.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  mode = modes.MODES[FLAGS.mode]
  if FLAGS.external and not mode.external:
    raise app.UsageError(f"--external serves --mode={modes.taking_external()}, not "
                         f"--mode={FLAGS.mode}")
  from cxr_jax import host_memory, paths

  host_memory.configure(FLAGS.config.host_memory)  # before JAX or tf.data start their threads
  modes.quiet_libraries()
  import jax  # after flag parsing, so --help is fast

  paths.use_compilation_cache()  # a resumed or repeated run reuses its compiled steps
  config = FLAGS.config
  config.eval.external = tuple(config.eval.external) + tuple(FLAGS.external)  # its short form
  if config.distributed:
    from cxr_jax.train import distributed

    distributed.initialize(config)
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX
  logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(),
               jax.process_count())
  result = mode.run(config, FLAGS.workdir, FLAGS)
  if jax.process_index() == 0:
    print(mode.printed(result), file=sys.stdout)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing of the command line, a tuple field's `a,b` read as the tuple ('a', 'b')
  (cxr_jax.cli.comma_lists, as the package's other command lines)."""
  return app.parse_flags_with_usage(cli.comma_lists(argv))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
