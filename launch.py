"""Entry point: python launch.py --config=configs/vgg16_ft2.py --workdir=workdirs/ft2 [--mode=...]

Modes: train (train, resume if the workdir has a checkpoint, then evaluate on the test split),
evaluate (recompute metrics and plots from the kept checkpoint), with --external=SPEC (repeatable,
train or evaluate) also on collections outside the run's data, into workdir/external/<name>/,
audit (the generalisation audit: internal, within-source, external, source-recognition probe, in
workdir/audit/audit.md; see cxr_jax.evaluate.audit), explain (Grad-CAM overlays),
cv / ablation / sweep (every fold / grid cell in workdir/runs/, then tables and figures; see
cxr_jax.experiments; started again, they skip finished runs and resume the unfinished one),
loso (leave one source out: a model per held-out source, scored on all of it; loso.md),
robustness (the source-robustness ablation: baseline, each measure, a combination, each run
audited; robustness.md; see cxr_jax.experiments.robustness),
twice_transfer (NIH findings stage, then single / twice / twice+output-neuron-keeping runs; see
configs/twice_transfer.py).
Any config field can be overridden: --config.model.trainable_blocks=3 --config.data.image_size=128;
a tuple field also as a comma-separated list: --config.data.sources=manifest:/a,folder:/b.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cxr_jax import cli  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results go.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "audit", "explain", "cv", "ablation",
                                    "sweep", "loso", "robustness", "twice_transfer"],
                  "What to do.")
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


class _QuietLibraries(logging.Filter):
  """Drops the INFO chatter of orbax/tfds (dozens of lines per checkpoint); warnings still show."""

  def filter(self, record):
    noisy = ("/orbax/", "/tensorflow_datasets/")
    return record.levelno > logging.INFO or not any(n in record.pathname for n in noisy)


def main(argv):
  del argv
  if FLAGS.external and FLAGS.mode not in ("train", "evaluate", "audit", "robustness"):
    raise app.UsageError("--external serves --mode=train/evaluate/audit/robustness, not "
                         f"--mode={FLAGS.mode}")
  from cxr_jax import host_memory

  host_memory.configure(FLAGS.config.host_memory)  # before JAX or tf.data start their threads
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_QuietLibraries())
  import jax  # after flag parsing, so --help is fast

  from cxr_jax import paths

  paths.use_compilation_cache()  # a resumed or repeated run reuses its compiled steps

  config = FLAGS.config
  if FLAGS.external:  # the flag is the short form of config.eval.external
    config.eval.external = tuple(config.eval.external) + tuple(FLAGS.external)
  if config.distributed:
    from cxr_jax.train import distributed

    distributed.initialize(config)
  import tensorflow as tf

  tf.config.set_visible_devices([], "GPU")  # tf.data only; keep accelerators for JAX
  logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(),
               jax.process_count())

  if FLAGS.mode == "train":
    from cxr_jax import train

    result = train.train_and_evaluate(config, FLAGS.workdir)
  elif FLAGS.mode == "evaluate":
    from cxr_jax import evaluate

    result = evaluate.evaluate_workdir(FLAGS.workdir, split=FLAGS.split, config=config)
    if config.eval.external:
      external = evaluate.evaluate_external(FLAGS.workdir, config.eval.external)
      result["external"] = {name: m["headline"] for name, m in external.items()}
  elif FLAGS.mode == "audit":
    from cxr_jax import evaluate

    result = evaluate.audit_workdir(FLAGS.workdir, config.eval.external, config=config,
                                    loso=config.eval.loso)
  elif FLAGS.mode in ("cv", "ablation", "sweep"):
    from cxr_jax import experiments

    result = experiments.run_experiment(config, FLAGS.workdir, FLAGS.mode)
  elif FLAGS.mode == "loso":
    from cxr_jax import experiments

    result = experiments.run_loso(config, FLAGS.workdir)
  elif FLAGS.mode == "robustness":
    from cxr_jax import experiments

    result = experiments.run_robustness(config, FLAGS.workdir)
  elif FLAGS.mode == "twice_transfer":
    from cxr_jax import experiments

    result = experiments.run_twice_transfer(config, FLAGS.workdir)
  else:
    from cxr_jax import explain

    result = explain.explain_workdir(FLAGS.workdir, split=FLAGS.split, per_class=FLAGS.per_class,
                                     method=FLAGS.method, config=config)
  if jax.process_index() == 0:
    summary = result if isinstance(result, dict) else {"result": str(result)}
    print(json.dumps(_headline(summary), indent=2), file=sys.stdout)
    if FLAGS.mode in ("train", "evaluate"):  # the audit's page holds its external figures
      from cxr_jax.evaluate.external import format_headline

      for name, headline in summary.get("external", {}).items():  # the gap, under the internal
        print(format_headline(name, headline), file=sys.stdout)


def _headline(metrics: dict) -> dict:
  """The few numbers worth printing at the end, each beside what qualifies it: the accuracy's
  interval, what the source alone reaches, and the COVID AUC inside each source that holds COVID
  and other images. The full set is in the workdir."""
  if "source_recognition" in metrics:  # an audit: its page says it all
    return {"audit": str(Path(metrics["workdir"]) / "audit" / "audit.md")}
  keys = ("num_examples", "accuracy", "source_only_accuracy", "winners", "written")
  picked = {k: metrics[k] for k in keys if k in metrics}
  if "intervals" in metrics:
    picked["accuracy_ci"] = metrics["intervals"].get("accuracy")
  if isinstance(metrics.get("per_class"), dict):
    picked["roc_auc"] = {c: m.get("roc_auc") for c, m in metrics["per_class"].items()}
  within = {s: w["covid_auc"]["value"] for s, w in metrics.get("within_source", {}).items()
            if (w.get("covid_auc") or {}).get("value") is not None}
  if within:
    picked["covid_auc_within_source"] = within
  return picked or metrics


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing of the command line, a tuple field's `a,b` read as the tuple ('a', 'b')
  (cxr_jax.cli.comma_lists, as the package's other command lines)."""
  return app.parse_flags_with_usage(cli.comma_lists(argv))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
