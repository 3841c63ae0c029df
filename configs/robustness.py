"""The source-robustness ablation (python launch.py --config=configs/robustness.py --workdir=W
--mode=robustness --external=manifest:../shared/data/cxr-external): the quick-start recipe
(VGG16-FT2, 128 px, 3 epochs) as the baseline, then each measure of
cxr_jax.experiments.robustness.MEASURES alone, one fold, same seed, trained on cxr3 only.

Arguments (optional): "measures=a+b+c" picks measures ('+'-separated, as commas separate config
arguments), e.g. configs/robustness.py:measures=baseline+group_dro.
"""

from configs import quickstart


def get_config(arg: str = ""):
  c = quickstart.get_config()
  quickstart.measured_before_cosine(c)   # as results/robustness_128px measured it
  c.experiment.num_folds = 1     # fold 0 of 5: validation chooses, the test split reports
  key, sep, value = (arg or "").partition("=")
  if arg and (key.strip() != "measures" or not sep):
    raise ValueError(f"config argument {arg!r}: expected measures=a+b+c")
  if value:
    c.experiment.measures = value.replace("+", ",")
  return c
