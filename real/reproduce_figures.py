"""The figures of ``useful-train reproduce`` (matplotlib, Agg): one PNG per claim (mean ± std over seeds) and
real_split_tsne.png, the paper's Figure 3 (a t-SNE of the logits at the split); docs/reproduce.md shows each.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from theory.plumbing.atomic import atomic_open  # noqa: E402

__all__ = ["draw_all", "draw_tsne", "tsne_embedding", "TSNE_POINTS", "TSNE_SEED"]

COLORS = {"sgd": "tab:blue", "sam": "tab:red", "useful": "tab:green", "random": "tab:gray"}
LABELS = {"sgd": "SGD", "sam": "SAM", "useful": "SGD+USEFUL", "random": "SGD+random upsampling"}
GROUP_STYLE = {1: ("-", "with the square"), 0: ("--", "without it")}
CONTRAST = "contrast of the clothing (beta_d analog)"
TSNE_POINTS = 3000  # at most this many training examples in the t-SNE (drawn with TSNE_SEED)
TSNE_SEED = 0


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def _finish(ax, xlabel=None, ylabel=None, title=None, legend=8, grid=True, **legend_kw) -> None:
    """A panel's labels, grid and legend (after everything is drawn: the legend takes what is there)."""
    ax.set(**{k: v for k, v in (("xlabel", xlabel), ("ylabel", ylabel), ("title", title)) if v is not None})
    if grid:
        ax.grid(alpha=0.3)
    ax.legend(fontsize=legend, **legend_kw)


def _errorbar(ax, x, summaries, **kw) -> list[float]:
    """Means ± std of a sweep's summaries (a point no seed reached: nan); returns the means."""
    m = [v["mean"] if v["mean"] is not None else np.nan for v in summaries]
    ax.errorbar(x, m, yerr=[v["std"] or 0.0 for v in summaries], marker="o", capsize=3, **kw)
    return m


def _curves(results, s, method, prefix=""):
    """A common grid of iterations and the (seeds, points, 2) running accuracies of each seed
    interpolated onto it (the seeds' windows differ where their upsampled lists differ in length)."""
    groups = [results[(f"c{s.contrast:g}", method, i)].groups for i in range(s.seeds)]
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


def draw_easy_first(path, s, results, claims):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, method in zip(axes, ("sgd", "sam", "useful")):
        x, acc = _curves(results, s, method)
        for group, (ls, text) in GROUP_STYLE.items():
            _band(ax, x, acc[:, :, group], COLORS[method], f"{text} (main phase)" if method == "useful" else text, ls)
        if method == "useful":
            xs, pre = _curves(results, s, method, prefix="separate_")
            for group, (_, text) in GROUP_STYLE.items():
                ax.plot(xs, np.nanmean(pre[:, :, group], 0), ":", color="black", lw=1,
                        label=f"{text} (pre-split)" if group == 1 else None)
            ax.axvline(s.separate_iteration, color="black", lw=0.8, ls=":")
        ax.axhline(s.fit_threshold, color="0.6", lw=0.8)
        _finish(ax, "iteration", None, f"{LABELS[method]} (contrast {s.contrast:g})", loc="lower right")
    axes[0].set_ylabel(f"running training accuracy (windows of {s.group_window} iterations)")
    fig.suptitle(f"the examples with the square are fit first (mean ± std over {s.seeds} seeds)", fontsize=10)
    _save(fig, path)


def draw_gap(path, s, results, claims):
    fig, ax = plt.subplots(figsize=(7, 4))
    for method in ("sgd", "sam", "useful"):
        x, acc = _curves(results, s, method)
        _band(ax, x, acc[:, :, 1] - acc[:, :, 0], COLORS[method], LABELS[method])
    ax.axvspan(0, s.early_iterations, color="0.9", zorder=0, label=f"first {s.early_iterations} iterations")
    ax.axhline(0, color="black", lw=0.6)
    _finish(ax, "iteration", "accuracy with the square - without it",
            f"gap between the groups (training, running; contrast {s.contrast:g})")
    _save(fig, path)


def _rule_lines(ax, s, chance) -> None:
    ax.axhline(s.split_threshold, color="black", lw=0.8, ls="--", label=f"rule: {s.split_threshold:g}")
    ax.axhline(chance, color="tab:red", lw=0.8, ls=":", label="chance precision")
    ax.set_ylim(0, 1.05)


def draw_split(path, s, results, claims):
    sep, sweep = claims["real_early_outputs_separate"]["values"], claims["real_contrast_sweep"]["values"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (key, name, color) in enumerate((("precision", "USEFUL precision", "tab:green"),
                                            ("recall", "USEFUL recall", "tab:olive"),
                                            ("precision_random_upsampling", "random precision", "tab:gray"),
                                            ("recall_random_upsampling", "random recall", "0.75"))):
        axes[0].bar(np.arange(s.seeds) + (k - 1.5) * 0.2, sep[key]["per_seed"], 0.2, color=color, label=name)
    _rule_lines(axes[0], s, sep["chance_precision"])
    axes[0].set_xticks(range(s.seeds), [f"seed {i}" for i in range(s.seeds)])
    _finish(axes[0], title=f"split at iteration {s.separate_iteration} vs has_easy (contrast {s.contrast:g})",
            legend=7, grid=False)
    for key, color in (("split_precision", "tab:green"), ("split_recall", "tab:olive")):
        _errorbar(axes[1], sweep["contrast"], sweep[key], color=color, label=key.replace("split_", ""))
    axes[1].set_ylim(0, 1.05)
    _finish(axes[1], CONTRAST, title="USEFUL's split against the contrast")
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


def draw_paired(path, s, results, claims):
    pairs = (("USEFUL - SGD", "useful_minus_sgd"), ("USEFUL - random", "useful_minus_random"),
             ("random - SGD", "random_minus_sgd"))
    helps = claims["real_useful_helps"]["values"]
    panels = [("planted: test accuracy without the square (seeds: dots; mean and 95% interval)",
               [(name, helps[key]) for name, key in pairs] + [("SAM - SGD", helps["sam_minus_sgd"])])]
    for cid, title in (("real_useful_plain", "unmodified Fashion-MNIST: test accuracy"),
                       ("real_long_budget", "unmodified, long budget: test accuracy")):
        if cid in claims:
            v = claims[cid]["values"]
            if cid == "real_long_budget":
                title += f" ({v['epochs']} epochs; >= {v['train_acc_required']:g} train acc "
                title += "reached)" if v["regime_reached"] else "NOT reached)"
            panels.append((title, [(name, v[key]) for name, key in pairs]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4))
    for ax, (title, entries) in zip(np.atleast_1d(axes), panels):
        _diff_panel(ax, entries, title)
    _save(fig, path)


def draw_sweep(path, s, results, claims):
    sweep = claims["real_contrast_sweep"]["values"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    lines = ((0, "test_acc_without_easy_sgd", "SGD", COLORS["sgd"]), (1, "split_precision", "precision", "tab:green"),
             (1, "split_recall", "recall", "tab:olive"),
             (2, "gap_sgd", f"SGD, first {s.early_iterations} iterations", COLORS["sgd"]))
    for k, key, label, color in lines:
        _errorbar(axes[k], sweep["contrast"], sweep[key], label=label, color=color)
    axes[1].set_ylim(0, 1.05)
    for ax, ylabel in zip(axes, ("test accuracy without the square",
                                 f"USEFUL's split at iteration {sweep['separate_iteration']} vs has_easy",
                                 "mean gap: training accuracy with - without the square")):
        _finish(ax, CONTRAST, ylabel)
    fig.suptitle(f"the contrast sweep (mean ± std over {s.seeds} seeds)", fontsize=10)
    _save(fig, path)


def draw_split_inputs(path, s, results, claims):
    v = claims["real_split_inputs"]["values"]
    names = list(v["inputs"])
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (key, color) in enumerate((("precision", "tab:green"), ("recall", "tab:olive"))):
        for j, name in enumerate(names):
            per = np.asarray(v["inputs"][name][key]["per_seed"], float)
            x = j + (k - 0.5) * 0.38
            ax.bar(x, np.nanmean(per), 0.38, color=color, label=key if j == 0 else None)
            ax.scatter(np.full(per.size, x), per, color="black", s=10, zorder=3)
    _rule_lines(ax, s, v["chance_precision"])
    ax.set_xticks(range(len(names)), [f"2-means on the {n}" for n in names], fontsize=8)
    ax.set_title(f"split at iteration {v['separate_iteration']} vs has_easy == False (bars: mean; dots: seeds)",
                 fontsize=9)
    _finish(ax, legend=7, grid=False)
    _save(fig, path)


def draw_rho_sweep(path, s, results, claims):
    v = claims["real_sam_rho_sweep"]["values"]
    rho = v["rho"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, sgd_key, label in ((axes[0], "gap", "gap_sgd", f"mean gap, first {v['early_iterations']} iterations"),
                                    (axes[1], "T_with_easy", "T_with_easy_sgd", "iteration the square is fit")):
        m = _errorbar(ax, rho, v[key], color=COLORS["sam"], label="SAM")
        if v[sgd_key]["mean"] is not None:
            ax.axhline(v[sgd_key]["mean"], color=COLORS["sgd"], label="SGD")
        never = [r for r, x in zip(rho, m) if np.isnan(x)]  # no seed reached it (e.g. the square never fit)
        if never:
            top = np.nanmax(m + [v[sgd_key]["mean"] or np.nan])
            ax.scatter(never, np.full(len(never), top * 1.05), marker="x", color=COLORS["sam"], label="never")
        ax.set(xscale="log", xticks=rho, xticklabels=[f"{r:g}" for r in rho])
        ax.minorticks_off()
        _finish(ax, "rho", label)
    onset = "none" if v["onset_rho"] is None else f"{v['onset_rho']:g}"
    fig.suptitle(f"SAM against rho (mean ± std over {s.seeds} seeds); more uniform than SGD in every seed from "
                 f"rho = {onset}", fontsize=10)
    _save(fig, path)


def tsne_embedding(features: np.ndarray, n: int = TSNE_POINTS, seed: int = TSNE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A 2-D t-SNE of at most ``n`` rows of ``features`` (drawn with ``seed``) and the rows it used."""
    from sklearn.manifold import TSNE

    rows = np.sort(np.random.default_rng(seed).permutation(len(features))[:n])
    tsne = TSNE(n_components=2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(np.asarray(features, np.float64)[rows]), rows


def _scatter(ax, emb, mask, labels, title):
    for value, (color, text) in ((False, labels[0]), (True, labels[1])):
        sel = mask == value
        ax.scatter(emb[sel, 0], emb[sel, 1], s=3, color=color, alpha=0.6, label=f"{text} ({int(sel.sum())})")
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)
    _finish(ax, legend=7, grid=False, markerscale=3)


def draw_tsne(path, planted, plain=None, iteration=None):
    """Figure 3: the t-SNE of the logits at the split, by cluster and by has_easy (``planted``: a
    RunResult of USEFUL on the planted data); ``plain``: the same for the unmodified images."""
    panels = 2 + (plain is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.6))
    emb, rows = tsne_embedding(planted.partition["logits"])
    clusters = (("0.7", "not upsampled"), ("tab:green", "upsampled"))
    _scatter(axes[0], emb, planted.partition["upsample"].astype(bool)[rows], clusters, "planted: USEFUL's clusters")
    _scatter(axes[1], emb, ~planted.easy["has_easy_train"].astype(bool)[rows],
             (("0.7", "with the square"), ("tab:red", "without it")), "planted: has_easy")
    if plain is not None:
        emb2, rows2 = tsne_embedding(plain.partition["logits"])
        _scatter(axes[2], emb2, plain.partition["upsample"].astype(bool)[rows2], clusters,
                 "unmodified images: USEFUL's clusters")
    at = f" at iteration {iteration}" if iteration is not None else ""
    fig.suptitle(f"t-SNE of the logits{at} (seed-0 runs; {len(rows)} training examples; sklearn TSNE, random_state "
                 f"{TSNE_SEED})", fontsize=10)
    _save(fig, path)


def draw_all(out: Path, s, results, claims_list) -> dict:
    """Every figure of the report; returns ``{"drawn": [names], "skipped": {name: why}}``."""
    claims = {c["id"]: c for c in claims_list}
    drawers = {"real_easy_first.png": draw_easy_first, "real_sam_more_uniform.png": draw_gap,
               "real_early_outputs_separate.png": draw_split, "real_useful_helps.png": draw_paired,
               "real_contrast_sweep.png": draw_sweep, "real_split_inputs.png": draw_split_inputs}
    if "real_sam_rho_sweep" in claims:
        drawers["real_sam_rho_sweep.png"] = draw_rho_sweep
    for name, draw in drawers.items():
        draw(out / name, s, results, claims)
    planted, plain = results[(f"c{s.contrast:g}", "useful", 0)], results[("plain", "useful", 0)]
    if "logits" not in planted.partition or "logits" not in plain.partition:
        return {"drawn": list(drawers), "skipped": {"real_split_tsne.png": "the partition file holds no logits (a "
                                                                           "trainer that does not record them)"}}
    draw_tsne(out / "real_split_tsne.png", planted, plain, s.separate_iteration)
    return {"drawn": [*drawers, "real_split_tsne.png"], "skipped": {}}
