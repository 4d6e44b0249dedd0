"""byol_jax: BYOL (Bootstrap Your Own Latent, Grill et al. 2020) in JAX + Haiku."""

__version__ = "0.1.0"


def load_encoder(path: str, batch_size: int = 256):
  """The frozen encoder of a training workdir or checkpoint: ``load_encoder(path)(images)``.

  See :func:`byol_jax.encoder.load_encoder`; imported on first use so ``import byol_jax`` stays
  cheap.
  """
  from byol_jax.encoder import load_encoder as _load_encoder

  return _load_encoder(path, batch_size=batch_size)
