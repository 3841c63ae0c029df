"""The default configuration, cxr_jax/config.py (every field documented there); kept here so that
`--config=configs/default.py` and `from configs import default` work as before."""

from cxr_jax.config import get_config

__all__ = ["get_config"]
