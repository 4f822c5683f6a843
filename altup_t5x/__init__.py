"""altup-t5x: Alternating Updates (AltUp, arXiv 2301.13310) for T5.1.1 encoder-decoders in JAX/Flax.

Light to import: nothing here imports T5X, TensorFlow or seqio.
"""
from altup_t5x.config import AltUpConfig, ConfigError, SIZES

__version__ = '0.1.0'
__all__ = ['AltUpConfig', 'ConfigError', 'SIZES']
