"""The figures of ``useful-train reproduce`` (matplotlib, Agg), one PNG per claim:

- real_easy_first.png: running training accuracy of the examples with and without the easy feature
  over iterations, for SGD, SAM and SGD+USEFUL (its pre-split phase dotted), mean ± std over seeds;
- real_sam_more_uniform.png: the gap between the two groups over iterations (the early window shaded);
- real_early_outputs_separate.png: the split's precision and recall per seed (USEFUL and random
  upsampling), and against the contrast;
- real_useful_helps.png: the paired differences per seed with their mean and 95 % interval, on the
  planted data (test examples without the feature) and on the unmodified images;
- real_contrast_sweep.png: accuracy without the feature, split quality and fit iterations against
  the contrast.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from theory.plumbing.atomic import atomic_open  # noqa: E402

__all__ = ["draw_all"]

COLORS = {"sgd": "tab:blue", "sam": "tab:red", "useful": "tab:green", "random": "tab:gray"}
LABELS = {"sgd": "SGD", "sam": "SAM", "useful": "SGD+USEFUL", "random": "SGD+random upsampling"}
GROUP_STYLE = {1: ("-", "with the square"), 0: ("--", "without it")}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def _curves(results, data, method, seeds, prefix=""):
    """A common grid of iterations and the (seeds, points, 2) running accuracies of each seed
    interpolated onto it (the seeds' windows differ where their upsampled lists differ in length)."""
    groups = [results[(data, method, i)].groups for i in seeds]
    centres = [(g[prefix + "start"] + g[prefix + "end"]) / 2 for g in groups]
    x = centres[int(np.argmin([c[-1] for c in centres]))]

    def interp(c, acc):
        ok = ~np.isnan(acc)
        return np.interp(x, c[ok], acc[ok]) if ok.any() else np.full(x.shape, np.nan)

    return x, np.stack([np.stack([interp(c, g[prefix + "accuracy"][:, k]) for k in (0, 1)], 1)
                        for c, g in zip(centres, groups)])


def _band(ax, x, values, color, label, ls="-"):
    m, s = np.nanmean(values, 0), np.nanstd(values, 0)
    ax.plot(x, m, color=color, ls=ls, label=label)
    ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, lw=0)


def draw_easy_first(path, s, results, data, seeds):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, method in zip(axes, ("sgd", "sam", "useful")):
        x, acc = _curves(results, data, method, seeds)
        for group, (ls, text) in GROUP_STYLE.items():
            _band(ax, x, acc[:, :, group], COLORS[method], f"{text} (main phase)" if method == "useful" else text, ls)
        if method == "useful":
            xs, pre = _curves(results, data, method, seeds, prefix="separate_")
            for group, (_, text) in GROUP_STYLE.items():
                ax.plot(xs, np.nanmean(pre[:, :, group], 0), ":", color="black", lw=1,
                        label=f"{text} (pre-split)" if group == 1 else None)
            ax.axvline(s.separate_iteration, color="black", lw=0.8, ls=":")
        ax.axhline(s.fit_threshold, color="0.6", lw=0.8)
        ax.set_title(f"{LABELS[method]} (contrast {s.contrast:g})")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel(f"running training accuracy (windows of {s.group_window} iterations)")
    fig.suptitle(f"the examples with the square are fit first (mean ± std over {len(seeds)} seeds)", fontsize=10)
    _save(fig, path)


def draw_gap(path, s, results, data, seeds):
    fig, ax = plt.subplots(figsize=(7, 4))
    for method in ("sgd", "sam", "useful"):
        x, acc = _curves(results, data, method, seeds)
        _band(ax, x, acc[:, :, 1] - acc[:, :, 0], COLORS[method], LABELS[method])
    ax.axvspan(0, s.early_iterations, color="0.9", zorder=0, label=f"first {s.early_iterations} iterations")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("iteration")
    ax.set_ylabel("accuracy with the square - without it")
    ax.set_title(f"gap between the groups (training, running; contrast {s.contrast:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def draw_split(path, s, claims, seeds):
    sep = claims["real_early_outputs_separate"]["values"]
    sweep = claims["real_contrast_sweep"]["values"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    width = 0.2
    for k, (key, name, color) in enumerate((("precision", "USEFUL precision", "tab:green"),
                                            ("recall", "USEFUL recall", "tab:olive"),
                                            ("precision_random_upsampling", "random precision", "tab:gray"),
                                            ("recall_random_upsampling", "random recall", "0.75"))):
        ax.bar(np.arange(len(seeds)) + (k - 1.5) * width, sep[key]["per_seed"], width, color=color, label=name)
    ax.axhline(s.split_threshold, color="black", lw=0.8, ls="--", label=f"rule: {s.split_threshold:g}")
    ax.axhline(sep["chance_precision"], color="tab:red", lw=0.8, ls=":", label="chance precision")
    ax.set_xticks(range(len(seeds)), [f"seed {i}" for i in seeds])
    ax.set_ylim(0, 1.05)
    ax.set_title(f"split at iteration {s.separate_iteration} vs has_easy (contrast {s.contrast:g})")
    ax.legend(fontsize=7)
    ax = axes[1]
    grid = sweep["contrast"]
    for key, color in (("split_precision", "tab:green"), ("split_recall", "tab:olive")):
        m = [v["mean"] for v in sweep[key]]
        e = [v["std"] for v in sweep[key]]
        ax.errorbar(grid, m, yerr=e, marker="o", color=color, capsize=3, label=key.replace("split_", ""))
    ax.set_xlabel("contrast of the clothing (beta_d analog)")
    ax.set_ylim(0, 1.05)
    ax.set_title("USEFUL's split against the contrast")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _diff_panel(ax, entries, title):
    for k, (name, diff) in enumerate(entries):
        per = 100 * np.asarray(diff["per_seed"])
        ax.scatter(np.full(per.size, k), per, color="0.4", s=14, zorder=3)
        if diff["low"] is not None:
            ax.errorbar([k], [100 * diff["mean"]], yerr=[[100 * (diff["mean"] - diff["low"])],
                                                         [100 * (diff["high"] - diff["mean"])]],
                        fmt="D", color="black", capsize=5, zorder=4)
        else:
            ax.scatter([k], [100 * diff["mean"]], marker="D", color="black", zorder=4)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(entries)), [name for name, _ in entries], rotation=15, fontsize=8)
    ax.set_ylabel("paired difference (points)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw_paired(path, claims):
    helps = claims["real_useful_helps"]["values"]
    plain = claims["real_useful_plain"]["values"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _diff_panel(axes[0], [("USEFUL - SGD", helps["useful_minus_sgd"]), ("USEFUL - random", helps["useful_minus_random"]),
                          ("random - SGD", helps["random_minus_sgd"]), ("SAM - SGD", helps["sam_minus_sgd"])],
                "planted: test accuracy without the square (seeds: dots; mean and 95% interval)")
    _diff_panel(axes[1], [("USEFUL - SGD", plain["useful_minus_sgd"]), ("USEFUL - random", plain["useful_minus_random"]),
                          ("random - SGD", plain["random_minus_sgd"])],
                "unmodified Fashion-MNIST: test accuracy")
    _save(fig, path)


def draw_sweep(path, s, claims):
    sweep = claims["real_contrast_sweep"]["values"]
    grid = sweep["contrast"]

    def line(ax, key, label, **kw):
        m = [v["mean"] for v in sweep[key]]
        e = [v["std"] for v in sweep[key]]
        ax.errorbar(grid, m, yerr=e, marker="o", capsize=3, label=label, **kw)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    line(axes[0], "test_acc_without_easy_sgd", "SGD", color=COLORS["sgd"])
    axes[0].set_ylabel("test accuracy without the square")
    line(axes[1], "split_precision", "precision", color="tab:green")
    line(axes[1], "split_recall", "recall", color="tab:olive")
    axes[1].set_ylim(0, 1.05)
    axes[1].set_ylabel(f"USEFUL's split at iteration {sweep['separate_iteration']} vs has_easy")
    line(axes[2], "gap_sgd", f"SGD, first {s.early_iterations} iterations", color=COLORS["sgd"])
    axes[2].set_ylabel("mean gap: training accuracy with - without the square")
    for ax in axes:
        ax.set_xlabel("contrast of the clothing (beta_d analog)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"the contrast sweep (mean ± std over {s.seeds} seeds)", fontsize=10)
    _save(fig, path)


def draw_all(out: Path, s, results, claims_list) -> None:
    claims = {c["id"]: c for c in claims_list}
    seeds = list(range(s.seeds))
    data = f"c{s.contrast:g}"
    draw_easy_first(out / "real_easy_first.png", s, results, data, seeds)
    draw_gap(out / "real_sam_more_uniform.png", s, results, data, seeds)
    draw_split(out / "real_early_outputs_separate.png", s, claims, seeds)
    draw_paired(out / "real_useful_helps.png", claims)
    draw_sweep(out / "real_contrast_sweep.png", s, claims)

