"""Explanations of a trained model's predictions: Grad-CAM and Grad-CAM++ heatmaps and overlays."""

from cxr_jax.explain.gradcam import DEFAULT_LAYER, METHODS, gradcam, make_cam_fn
from cxr_jax.explain.overlay import save_overlay
from cxr_jax.explain.workdir import explain_workdir

__all__ = ["DEFAULT_LAYER", "METHODS", "explain_workdir", "gradcam", "make_cam_fn", "save_overlay"]
