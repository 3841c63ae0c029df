"""Every block's pooled output (per-channel spatial mean) and its second moment (per-channel
spatial standard deviation), a 16 x 16 thumbnail of the input, and the logits, of a run's train / val / test splits and of other
collections (reader specs), in one .npz for variants.py:

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/moments.py WORKDIR CACHE.npz \
      manifest:../shared/data/cxr-plus manifest:../shared/data/cxr-external
"""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import data
from cxr_jax.data.records import NO_LABEL
from cxr_jax.evaluate import external, inference
from cxr_jax.evaluate.run import LoadedRun, LoadedSplit, data_batches

workdir, out, specs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
run = LoadedRun.from_workdir(workdir)
model, names = run.model, inference.stage_names(run.model)


@jax.jit
def moments(variables, images):
  x, start, res = images, "input", {}
  # The input as the model gets it (after the run's preprocessing and normalisation), its first
  # channel averaged to 16 x 16: what acquisition alone looks like, before any learnt filter.
  n, h, w, _ = images.shape
  res["thumbnail"] = images[..., 0].astype(jnp.float32).reshape(
      n, 16, h // 16, 16, w // 16).mean(axis=(2, 4)).reshape(n, 256)
  for name in names:
    x = model.apply(variables, x, train=False, start=start, stop=name)
    xf = x.astype(jnp.float32)
    mean = xf.mean(axis=(1, 2))
    res[name + "_mean"], start = mean, name
    res[name + "_std"] = jnp.sqrt(jnp.maximum((xf * xf).mean(axis=(1, 2)) - mean * mean, 0))
  res["logits"] = model.apply(variables, x, train=False, start=start).astype(jnp.float32)
  return res


arrays = {}


def over(tag, loaded):
  outputs, labels, ids = inference.run_batches(lambda x: moments(run.variables, x),
                                               data_batches(loaded, run.batch_size))
  arrays.update({f"{tag}/{k}": v for k, v in outputs.items()})
  arrays[f"{tag}/labels"] = labels
  arrays[f"{tag}/sources"] = np.asarray(loaded.built.metadata["source"][ids]).astype(str)
  print(tag, len(labels), flush=True)


for split in ("train", "val", "test"):
  over(split, run.split(split))
for spec in specs:
  config = external.external_data_config(run.trained.config, spec)
  built = data.build_dataset(config.data, every_class=False)
  meta = built.metadata
  over(external.external_name(spec),
       LoadedSplit(run.trained, config, built, meta["id"][meta["label"] != NO_LABEL]))
np.savez(out, **arrays)
