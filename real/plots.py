"""Figures of one run: loss and accuracy per epoch (curves.png)."""

from __future__ import annotations

import io
import logging
from typing import Sequence

__all__ = ["curves_png"]

log = logging.getLogger("real.plots")


def curves_png(metrics: Sequence[dict], *, title: str = "") -> bytes | None:
    """Loss and accuracy per epoch, train and test (the pre-split phase dashed), as PNG bytes; None
    (with a warning) if drawing fails: a figure must never lose a run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for phase, style in (("separate", "--"), ("main", "-")):
            rows = [m for m in metrics if m["phase"] == phase]
            if not rows:
                continue
            ep = [m["epoch"] for m in rows]
            tag = "" if phase == "main" else " (pre-split)"
            for ax, key in ((axes[0], "loss"), (axes[1], "acc")):
                ax.plot(ep, [m[f"train_{key}"] for m in rows], style, marker="o", ms=3, color="C0", label=f"train{tag}")
                ax.plot(ep, [m[f"test_{key}"] for m in rows], style, marker="o", ms=3, color="C1", label=f"test{tag}")
        for ax, name in zip(axes, ("loss", "accuracy")):
            ax.set_xlabel("epoch")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        return buffer.getvalue()
    except Exception as err:  # noqa: BLE001 - a plotting failure must not lose the run
        log.warning("could not draw the curves: %s", err)
        return None
