"""The claims report's format, shared by ``useful-sim reproduce`` and ``useful-train reproduce``.

``claims.json`` is an object with a list ``claims``; each claim is ``{"id", "statement", "holds",
"values", "rule", "figure"}`` (and a ``note`` where one explains a claim that does not hold), its
numbers summarized over seeds by :func:`summarize` (SPEC section 3).  One definition, so that both
reports read the same way.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["summarize", "claim", "claims_lines"]


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and std (ddof=0) over the finite per-seed values, and the per-seed values.

    ``None`` (e.g. a feature never learned) and non-finite values (a ratio to a time never reached)
    are kept in ``per_seed`` as None (strict JSON) and counted in ``missing``.
    """
    vals = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    finite = np.array([v for v in vals if v is not None], dtype=float)
    return {"mean": float(finite.mean()) if finite.size else None, "std": float(finite.std()) if finite.size else None,
            "per_seed": vals, "missing": int(sum(v is None for v in vals))}


def claim(cid: str, statement: str, holds: bool, values: dict, rule: str, figure: str | None,
          note: str | None = None) -> dict[str, Any]:
    """One claim of the report (``note`` only when given)."""
    out = {"id": cid, "statement": statement, "holds": bool(holds), "values": values, "rule": rule, "figure": figure}
    if note:
        out["note"] = note
    return out


def claims_lines(report: dict) -> list[str]:
    """``ID  holds`` / ``ID  DOES NOT HOLD``, one line per claim, aligned (what the commands print)."""
    width = max((len(c["id"]) for c in report["claims"]), default=0)
    return [f"{c['id']:<{width}}  {'holds' if c['holds'] else 'DOES NOT HOLD'}" for c in report["claims"]]
