"""The source-robustness ablation on cxr3 + cxr-plus (issue 30):

  python launch.py --config=configs/robustness_multisource.py --workdir=W --mode=robustness \
      --external=manifest:../shared/data/cxr-external

configs/multisource.py as the baseline, then each measure of
cxr_jax.experiments.robustness.MEASURES alone, one fold, same seed. On cxr3 alone group DRO had no
cell to move towards and DANN removed the label with the source (results/robustness_128px/); here
four sources hold two labels each, so both can work or fail honestly. Choose by validation and
leave-one-source-out, never by cxr-external.

Arguments as configs/robustness.py: "measures=a+b+c".
"""

from configs import multisource, robustness


def get_config(arg: str = ""):
  c = multisource.get_config()
  c.experiment.num_folds = 1
  if arg:
    c.experiment.measures = robustness.get_config(arg).experiment.measures
  return c
