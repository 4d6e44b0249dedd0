"""XLA:CPU speed work behind ``config.model.conv_impl``: convolutions and max-pooling lowered to
matrix products, Winograd F(2x2, 3x3) and strided slices.

XLA:CPU's direct convolutions reach only a few percent of its matmul speed on a ResNet's
small-spatial, many-channel layers, and its reduce-window max-pool differentiates into a scatter.
The networks (:mod:`byol_jax.models`) are written with Haiku's own layers and know nothing of
this: :func:`lowered` wraps a transformed network so that its ``hk.Conv2D`` and ``hk.MaxPool``
layers compute as ``conv_impl`` says, with the same parameters (and names) and equal results up
to float rounding, values and gradients. "xla" (the default on GPU/TPU) changes nothing.

- :mod:`~byol_jax.cpu_ops.lowering`: the interceptor, :func:`lowered`, :func:`resolve_conv_impl`.
- :mod:`~byol_jax.cpu_ops.conv_matmul`: convolutions as im2col, per-tap and dense-tap products.
- :mod:`~byol_jax.cpu_ops.winograd`: Winograd F(2x2, 3x3) for 3x3 stride-1 layers.
- :mod:`~byol_jax.cpu_ops.max_pool`: max-pooling as separable strided slices.
"""

from byol_jax.cpu_ops.lowering import CONV_IMPLS, lowered, resolve_conv_impl

__all__ = ["CONV_IMPLS", "lowered", "resolve_conv_impl"]
