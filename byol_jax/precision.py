"""Mixed precision: bfloat16 compute with float32 parameters, normalisation, loss and optimiser.

:func:`mixed_precision` wraps a transformed network's ``apply``; the network's own code is left
untouched. Under the wrapper, convolutions and linear layers read their parameters (through a Haiku
custom getter) and their inputs as the compute dtype, so the matrix products and convolutions run
in bfloat16; a weight-standardised convolution (``models.WSConv2D``) standardises its float32
kernel before the cast. BatchNorm and GroupNorm see their input cast up to float32, so their
statistics, normalisation and moving averages stay in float32, and their output is cast back
down. Every floating output of the network comes back as float32, so the loss is computed in
float32. The parameters that are stored, differentiated and updated remain float32 throughout: the
gradient of the cast is a cast back, so gradients and optimiser state are float32 as well.
"""

from __future__ import annotations

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from byol_jax.config_base import COMPUTE_DTYPES

# Backends on which "auto" picks bfloat16: their matrix units run it at several times fp32 speed.
_BF16_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def resolve_compute_dtype(name: str, backend: str) -> jnp.dtype:
  """The dtype named by a config value; "auto": bfloat16 on GPU/TPU, float32 on CPU.

  Args:
    name: one of :data:`COMPUTE_DTYPES`.
    backend: the platform the step runs on, e.g. ``jax.default_backend()``.
  """
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"Unknown compute dtype {name!r}; expected one of {COMPUTE_DTYPES}.")
  if name == "auto":
    name = "bfloat16" if backend in _BF16_BACKENDS else "float32"
  return jnp.dtype(name)


def _cast_floating(x: Any, dtype: jnp.dtype) -> Any:
  if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(dtype)
  return x


def _cast_first(args: tuple, kwargs: dict, dtype: jnp.dtype) -> tuple[tuple, dict]:
  """Casts the module's input: the first positional argument, or ``inputs=`` if passed by name."""
  if args:
    return (_cast_floating(args[0], dtype), *args[1:]), kwargs
  if "inputs" in kwargs:
    return args, {**kwargs, "inputs": _cast_floating(kwargs["inputs"], dtype)}
  return args, kwargs


def _interceptor(dtype: jnp.dtype):
  def param_getter(next_getter, value, context):
    del context
    # Cast what the layer finally reads: getters entered later (a weight standardisation) see
    # the float32 parameter.
    return _cast_floating(next_getter(value), dtype)

  def intercept(next_f, args, kwargs, context):
    if context.method_name != "__call__":
      return next_f(*args, **kwargs)
    module = context.module
    if isinstance(module, hk.BatchNorm | hk.GroupNorm):
      # Means and variances summed over a large batch (or a group's channels and pixels) in
      # bfloat16 (8 bits of mantissa) are too coarse to normalise with, and the moving averages
      # are meant to track float32 statistics.
      original = args[0].dtype if args else kwargs["inputs"].dtype
      args, kwargs = _cast_first(args, kwargs, jnp.float32)
      return _cast_floating(next_f(*args, **kwargs), original)
    if isinstance(module, hk.ConvND | hk.Linear):
      args, kwargs = _cast_first(args, kwargs, dtype)
      with hk.custom_getter(param_getter):
        return next_f(*args, **kwargs)
    return next_f(*args, **kwargs)

  return intercept


def mixed_precision(
  network: hk.TransformedWithState, compute_dtype: jnp.dtype | str
) -> hk.TransformedWithState:
  """``network`` computing in ``compute_dtype``; returned unchanged for float32.

  ``init`` is the network's own (parameters and state are created in float32). ``apply`` takes
  the same arguments as the network's and returns its outputs with every floating leaf in float32.
  """
  dtype = jnp.dtype(compute_dtype)
  if dtype == jnp.float32:
    return network
  intercept = _interceptor(dtype)

  def apply(params: hk.Params, state: hk.State, *args, **kwargs):
    # The interceptor stack is thread-local, not tied to a transform, so it reaches the modules
    # that the wrapped apply creates.
    with hk.intercept_methods(intercept):
      out, state = network.apply(params, state, *args, **kwargs)
    return jax.tree.map(lambda x: _cast_floating(x, jnp.float32), out), state

  return hk.TransformedWithState(init=network.init, apply=apply)
