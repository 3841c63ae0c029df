"""Explanations of a trained model's predictions: Grad-CAM, Grad-CAM++ and LRP heatmaps, overlays."""

from cxr_jax.explain.gradcam import DEFAULT_LAYER, METHODS, gradcam, make_cam_fn
from cxr_jax.explain.lrp import input_bounds, lrp, make_lrp_fn
from cxr_jax.explain.overlay import save_overlay
from cxr_jax.explain.regions import LUNG_BOXES, lung_field_mask, lung_field_share
from cxr_jax.explain.workdir import explain_workdir

__all__ = ["DEFAULT_LAYER", "LUNG_BOXES", "METHODS", "explain_workdir", "gradcam", "input_bounds",
           "lrp", "lung_field_mask", "lung_field_share", "make_cam_fn", "make_lrp_fn",
           "save_overlay"]
