"""Comparing configs: a run's saved config against the one it resumes or loads with.

Which fields differ (noted when a run restarts with another config), and which of those change
the architecture (a checkpoint of another architecture is refused with the fields named).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def flat_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested dict (a config) with dotted keys: ``{"model.encoder": ..., ...}``."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flat_dict(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


# ``model.*`` fields that change how the network computes but not its parameters: a run may resume
# with other values (e.g. bfloat16 compute on a GPU after float32 on a CPU, or with remat).
NON_ARCHITECTURE_FIELDS = ("model.compute_dtype", "model.conv_impl", "model.remat")


def architecture_mismatch(
  saved: Mapping[str, Any], wanted: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> list[str]:
  """Lists the ``model.*`` fields that differ between two configs (as plain dicts).

  Fields missing from ``saved`` (written before they existed) take their value in ``defaults``;
  lists (as JSON gives tuples back) compare equal to tuples.
  """
  a = flat_dict((defaults or {}).get("model", {}), "model.")
  a.update(flat_dict(saved.get("model", {}), "model."))
  b = flat_dict(wanted.get("model", {}), "model.")
  a, b = ({k: tuple(v) if isinstance(v, list) else v for k, v in d.items()} for d in (a, b))
  return [
    f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
    for k in sorted(set(a) | set(b))
    if a.get(k) != b.get(k) and k not in NON_ARCHITECTURE_FIELDS
  ]


def changed_fields(a: str, b: str) -> list[str]:
  """The dotted names of the fields that differ between two configs as JSON text."""
  try:
    old, new = flat_dict(json.loads(a)), flat_dict(json.loads(b))
  except ValueError:  # a file cut short: every field counts as changed
    return ["(unreadable previous config)"]
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
