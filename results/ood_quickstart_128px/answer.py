"""Selective prediction's answer rule (`ood.doubt`, config.eval.answer_accuracy) on the quick-start
model, through the product's own fit and evaluation (`ood.fit`, `ood.evaluate_ood`) on the outputs
moments.py cached: the doubt's risk-coverage against msp's and the flagging score's, and what each
accuracy target answers. cxr-plus (collections the model never saw, with both of SIIM's labels) is
what the rule was chosen on; cxr-external is reported, never chosen by.

  PYTHONPATH=$PWD .venv/bin/python results/ood_quickstart_128px/answer.py CACHE.npz TEMPERATURE \
      "MACHINE" > results/ood_quickstart_128px/answer.md
"""
import sys

import numpy as np

from cxr_jax.data.records import LABELS
from cxr_jax.evaluate import ood

z, temperature, machine = np.load(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
BLOCKS = [f"block{b}" for b in range(1, 6)]


def outputs(tag):
  blocks = {b: z[f"{tag}/{b}_mean"] for b in BLOCKS}
  return dict(logits=z[f"{tag}/logits"], features=blocks["block5"], blocks=blocks,
              input=z[f"{tag}/thumbnail"])


def labels(tag):
  return z[f"{tag}/labels"]


test = outputs("test")
reference = dict(test, correct=test["logits"].argmax(1) == labels("test"),
                 sources=z["test/sources"])
fits = {acc: ood.fit(outputs("train"), labels("train"), outputs("val"), labels("val"),
                     temperature=temperature, keep=0.95, k=10, score="knn_blocks",
                     model_digest="cache", reference=reference, answer_accuracy=acc)
        for acc in (0.85, 0.90, 0.95)}
print(f"# Answering only where familiar and confident: the quick-start model (VGG16-FT2, 128 px)\n\n"
      f"{machine}. The run of `make train` (test accuracy "
      f"{reference['correct'].mean():.3f} on {len(reference['correct'])} images); its outputs "
      f"cached by `moments.py`, fitted here by `ood.fit` ({fits[0.95].n_train} training images, "
      f"{fits[0.95].n_val} validation images, temperature {temperature:.3f}, flagging score "
      "knn_blocks keeping 95 % of validation), evaluated by `ood.evaluate_ood`: the numbers "
      "every evaluation writes.\n")
sections = {}
for tag in ("cxr-plus", "cxr-external"):
  sections[tag] = {acc: ood.evaluate_ood(f, outputs(tag), labels(tag), z[f"{tag}/sources"],
                                         is_reference=False, class_names=LABELS)
                   for acc, f in fits.items()}
print("## Ranking errors: area under the risk-coverage curve (lower is better)\n")
print("| score | test split | test + cxr-plus (chosen on) | test + cxr-external (reported) |")
print("| --- | --- | --- | --- |")
for s in ("msp", "knn_blocks", "doubt"):
  this = ood.risk_coverage(fits[0.95].doubt(fits[0.95].reference["scores"]) if s == "doubt" else
                           fits[0.95].reference["scores"][s], reference["correct"])
  cells = [f"{this['aurc']:.3f} ({this['aurc_optimal']:.3f})"]
  for tag in sections:
    rc = sections[tag][0.95]["selective"]["pooled"][s]["risk_coverage"]
    cells.append(f"{rc['aurc']:.3f} ({rc['aurc_optimal']:.3f})")
  print(f"| {s} | " + " | ".join(cells) + " |")
print("\nIn brackets the optimal area (every error ranked last). msp ranks the test split's own "
      "errors best and those of unseen collections worst; knn_blocks the reverse; the doubt, "
      "the larger of an image's two validation ranks, is close to msp inside and the best of the "
      "three on both unseen sets.\n")
print("## What each accuracy target answers (share answered / accuracy on answered)\n")
print("| answer_accuracy | doubt threshold | validation | test split | cxr-plus: " +
      " | cxr-plus: ".join(sorted(set(z["cxr-plus/sources"]))) + " | test + cxr-plus | " +
      "cxr-external: " + " | cxr-external: ".join(sorted(set(z["cxr-external/sources"]))) +
      " | test + cxr-external |")
print("|" + " --- |" * 10)
val_correct = outputs("val")["logits"].argmax(1) == labels("val")
fmt = lambda kept, acc: f"{100 * kept:.0f} % / " + ("-" if acc is None else f"{acc:.3f}")
for acc, f in fits.items():
  val_kept = f.doubt(f.scores(outputs("val"))) <= f.answer_threshold
  cells = [f"{acc:.2f}", f"{f.answer_threshold:.3f}",
           fmt(val_kept.mean(), val_correct[val_kept].mean() if val_kept.any() else None)]
  ref_doubt = f.doubt(f.reference["scores"]) <= f.answer_threshold
  cells.append(fmt(ref_doubt.mean(), reference["correct"][ref_doubt].mean()))
  for tag in sections:
    sec = sections[tag][acc]
    cells += [fmt(v["kept"], v["accuracy_kept"]) for _, v in sorted(sec["by_source_answered"].items())]
    pooled = sec["selective"]["pooled"]["doubt"]
    cells.append(fmt(pooled["kept"], pooled["accuracy_kept"]))
  print("| " + " | ".join(cells) + " |")
print("\nEvery image kept, accuracy: test " + f"{reference['correct'].mean():.3f}" + "".join(
    f", test + {tag} {sections[tag][0.95]['selective']['pooled']['doubt']['accuracy_all']:.3f}"
    for tag in sections) + ".")
