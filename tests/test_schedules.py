"""Learning-rate and τ schedules against their closed forms, computed with numpy."""

import math

import numpy as np

from byol_jax import schedules


def test_warmup_cosine_matches_closed_form():
  peak, warmup, total = 3.2, 10, 100
  for k in [0, 1, 5, 9, 10, 11, 50, 99, 100, 120]:
    if k < warmup:
      expected = peak * k / warmup
    else:
      expected = (
        0.5 * peak * (1 + math.cos(math.pi * min(k - warmup, total - warmup) / (total - warmup)))
      )
    np.testing.assert_allclose(
      schedules.warmup_cosine(k, peak, warmup, total), expected, rtol=1e-5, atol=1e-7
    )


def test_warmup_cosine_is_continuous_and_ends_at_zero():
  lrs = np.array([schedules.warmup_cosine(k, 1.0, 10, 100) for k in range(101)])
  assert lrs[0] == 0.0
  assert abs(lrs[10] - 1.0) < 1e-6
  assert abs(lrs[100]) < 1e-7
  assert np.max(np.abs(np.diff(lrs))) <= 0.1 + 1e-6


def test_target_ema_decay_matches_paper():
  base, total = 0.996, 1000
  for k in [0, 1, 250, 500, 999, 1000]:
    expected = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
    np.testing.assert_allclose(schedules.target_ema_decay(k, base, total), expected, rtol=1e-6)
  assert float(schedules.target_ema_decay(0, base, total)) == np.float32(base)
  assert float(schedules.target_ema_decay(total, base, total)) == 1.0


def test_linear_scaling_rule():
  assert schedules.scaled_learning_rate(0.2, 4096) == 0.2 * 16
