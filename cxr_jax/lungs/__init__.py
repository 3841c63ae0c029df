"""Lung fields: a U-Net trained here on public ieee8023 lung masks, and what uses its masks.

  seg = load_or_train()                   # stored by a hash of recipe + annotation data
  found = seg.lungs(gray, name=path)      # Found(mask, check); check.ok False -> whole image
  masks.crop_box(found.mask, margin)      # config.data.crop = "lungs"
  masks.blank(image, mask)                # the lungs_blanked / outside_blanked probes
  masks.lung_share(heatmaps, masks)       # share of Grad-CAM / LRP mass on the lungs, and chance

CLI: `python -m cxr_jax.lungs all` (`make lungs`) trains, scores and draws results/lungs/.
"""

from cxr_jax.lungs.recipe import Recipe
from cxr_jax.lungs.segment import Found, Segmenter, load_or_train

__all__ = ["Found", "Recipe", "Segmenter", "load_or_train"]
