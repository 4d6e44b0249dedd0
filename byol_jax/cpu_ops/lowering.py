"""Runs a network's ``hk.Conv2D`` and ``hk.MaxPool`` layers through the CPU lowering.

:func:`lowered` wraps a transformed network's ``apply`` in a Haiku method interceptor, so the
network's code, parameters and parameter names stay those of plain Haiku: with "matmul" every
convolution is computed by :func:`~byol_jax.cpu_ops.conv_matmul.conv2d_as_matmul` and every
max-pool by :func:`~byol_jax.cpu_ops.max_pool.max_pool_same`; "winograd" adds Winograd F(2x2, 3x3)
for the 3x3 layers where it is faster; "xla" leaves both to XLA (the GPU/TPU path). Layers the
lowering does not cover (grouped, dilated or masked convolutions, other windows) run as Haiku's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import haiku as hk
import jax

from byol_jax import config_base
from byol_jax.cpu_ops.conv_matmul import conv2d_as_matmul
from byol_jax.cpu_ops.max_pool import max_pool_same

CONV_IMPLS = tuple(impl for impl in config_base.CONV_IMPLS if impl != "auto")


def resolve_conv_impl(impl: str, backend: str) -> str:
  """``"auto"`` -> ``"winograd"`` on CPU, ``"xla"`` on accelerators; other values unchanged."""
  if impl == "auto":
    return "winograd" if backend == "cpu" else "xla"
  return impl


def _conv(next_f: Callable, args, kwargs, module: hk.Conv2D, use_winograd: bool) -> jax.Array:
  """``module(x)`` through :func:`conv2d_as_matmul`, with the module's own parameters."""
  if (
    module.channel_index != -1
    or module.feature_group_count != 1
    or module.mask is not None
    or any(d != 1 for d in module.kernel_dilation)
    or kwargs.get("precision") is not None
    or len(args) != 1
    or args[0].ndim != 4
  ):
    return next_f(*args, **kwargs)
  x = args[0]
  w = hk.get_parameter("w", (*module.kernel_shape, x.shape[-1], module.output_channels), x.dtype)
  out = conv2d_as_matmul(x, w, module.stride, module.padding, use_winograd)
  if module.with_bias:
    out = out + hk.get_parameter("b", (module.output_channels,), x.dtype)
  return out


def _square(size: int | Sequence[int], channel_axis: int | None) -> int | None:
  """k where Haiku reads a pooling window (or strides) on NHWC input as (1, k, k, 1), else None."""
  if isinstance(size, int):
    return size if channel_axis in (-1, 3) else None
  full = (1,) * (4 - len(size)) + tuple(size)  # Haiku: missing leading axes are batch axes
  return full[1] if len(full) == 4 and full[0] == full[3] == 1 and full[1] == full[2] else None


def _max_pool(next_f: Callable, args, kwargs, module: hk.MaxPool) -> jax.Array:
  """``module(x)`` through :func:`max_pool_same`."""
  window = _square(module.window_shape, module.channel_axis)
  stride = _square(module.strides, module.channel_axis)
  if module.padding != "SAME" or not window or not stride or len(args) != 1 or args[0].ndim != 4:
    return next_f(*args, **kwargs)
  return max_pool_same(args[0], window, stride)


def _intercept(next_f: Callable, args, kwargs, context: hk.MethodContext, use_winograd: bool):
  if context.method_name == "__call__":
    # Haiku's own convolution (hk.ConvND.__call__), also where a subclass such as
    # models.WSConv2D calls it: the subclass's __call__ runs first (standardising the kernel
    # that the lowering then reads through hk.get_parameter).
    if isinstance(context.module, hk.Conv2D) and context.orig_class is hk.ConvND:
      return _conv(next_f, args, kwargs, context.module, use_winograd)
    if type(context.module) is hk.MaxPool:
      return _max_pool(next_f, args, kwargs, context.module)
  return next_f(*args, **kwargs)


def lowered(network: hk.TransformedWithState, impl: str) -> hk.TransformedWithState:
  """``network`` with its convolutions and max-pools computed as ``impl`` says.

  ``impl`` is one of :data:`CONV_IMPLS` (resolve "auto" with :func:`resolve_conv_impl` first);
  "xla" returns ``network`` itself. ``init`` is the network's own, so parameters, their names and
  shapes are the same for every ``impl``; ``apply`` takes and returns what the network's does.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}.")
  if impl == "xla":
    return network
  intercept = functools.partial(_intercept, use_winograd=impl == "winograd")

  def apply(params: hk.Params, state: hk.State, *args, **kwargs):
    # The interceptor stack is thread-local, not tied to a transform, so it reaches the modules
    # that the wrapped apply creates (inside any interceptor already entered, e.g. precision's).
    with hk.intercept_methods(intercept):
      return network.apply(params, state, *args, **kwargs)

  return hk.TransformedWithState(init=network.init, apply=apply)
