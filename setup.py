"""byol_jax: BYOL (Bootstrap Your Own Latent) in JAX + Haiku."""

import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "requirements.txt")) as f:
  requirements = [line.strip() for line in f if line.strip() and not line.startswith("#")]

setup(
  name="byol_jax",
  version="0.1.0",
  description="BYOL (Grill et al., 2020) self-supervised pretraining in JAX + Haiku, from a laptop CPU to a TPU pod.",
  packages=find_packages(include=["byol_jax", "byol_jax.*"]),
  python_requires=">=3.10",
  install_requires=requirements,
  extras_require={
    "test": [
      "pytest>=8",
      "ruff>=0.6",
      "matplotlib>=3.8",
      "scikit-learn>=1.3",
      "dill>=0.3",
      "scipy>=1.11",
    ],
    "report": ["matplotlib>=3.8", "scikit-learn>=1.3"],
    "torch": ["torch>=2.4"],
  },
  entry_points={"console_scripts": ["byol-jax=byol_jax.main:entry_point"]},
  license="Apache-2.0",
)
