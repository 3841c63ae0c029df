"""Explanations of a trained model's predictions: Grad-CAM, Grad-CAM++ and LRP heatmaps, overlays.

Grad-CAM and LRP (JAX only) load with the package; the overlays (matplotlib), the lung-field
shares and the workdir explainer (the evaluation: scikit-learn, SciPy) on first use
(`cxr_jax.lazy`), so that prediction without overlays imports none of them.
"""

from cxr_jax import lazy

# Loaded here, not lazily: `gradcam` and `lrp` name both a module and its function.
from cxr_jax.explain.gradcam import DEFAULT_LAYER, METHODS, gradcam, make_cam_fn
from cxr_jax.explain.lrp import input_bounds, lrp, make_lrp_fn

_HOMES = {
    "save_overlay": "overlay",
    "LUNG_BOXES": "regions", "lung_field_mask": "regions", "lung_field_share": "regions",
    "explain_workdir": "workdir",
}

__getattr__, __dir__, _ = lazy.attach(__name__, _HOMES)
__all__ = ["DEFAULT_LAYER", "LUNG_BOXES", "METHODS", "explain_workdir", "gradcam", "input_bounds",
           "lrp", "lung_field_mask", "lung_field_share", "make_cam_fn", "make_lrp_fn",
           "save_overlay"]
