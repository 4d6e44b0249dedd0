"""torch for the PyTorch tests: optional locally, required in CI."""

import os

import pytest


def import_torch():
  """torch; a local run without it skips, but CI (``CI`` set) fails: .ci/run installs torch."""
  if os.environ.get("CI", "").lower() in ("", "0", "false"):
    return pytest.importorskip("torch")
  try:
    import torch
  except ImportError as e:
    pytest.fail(
      f"CI={os.environ['CI']} but torch does not import ({e}): .ci/run installs torch==2.13.0 "
      "so that the PyTorch export test runs."
    )
  return torch
