"""Figures of one run: loss and accuracy per epoch (curves.png)."""

from __future__ import annotations

import io
import logging
from typing import Sequence

__all__ = ["curves_png"]

log = logging.getLogger("real.plots")


def curves_png(metrics: Sequence[dict], *, title: str = "") -> bytes | None:
    """Loss and accuracy per epoch, train and test (the pre-split phase dashed), as PNG bytes; None (with
    a warning) if drawing fails: a figure must never lose a run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for phase, style, tag in (("separate", "--", " (pre-split)"), ("main", "-", "")):
            rows = [m for m in metrics if m["phase"] == phase]
            if not rows:
                continue
            for ax, key in zip(axes, ("loss", "acc")):
                for split, color in (("train", "C0"), ("test", "C1")):
                    ax.plot([m["epoch"] for m in rows], [m[f"{split}_{key}"] for m in rows], style, marker="o", ms=3,
                            color=color, label=split + tag)
        for ax, name in zip(axes, ("loss", "accuracy")):
            ax.set(xlabel="epoch", ylabel=name)
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
