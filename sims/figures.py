"""The figures of the claims report (matplotlib, Agg backend), one PNG per claim where one fits.

:func:`draw_all` draws them from a :class:`sims.experiments.ReproduceResults`; each PNG carries the
figure format marker (:data:`sims.files.FIGURE_FORMAT`, in its ``Software`` text chunk).

- gd_fast_first.png: alignment curves max_j <w_j, v> of both features, GD vs SAM (the paper's Figure 3
  style), with the theory's recurrences dashed (GD's recurrence; SAM's coupled recurrence);
- sam_more_uniform.png: the fast-minus-slow alignment gap over iterations;
- theory_matches_simulation.png: predicted vs simulated fast-feature learning times per seed;
- sam_generalizes_better.png: slow-only test accuracy over iterations;
- early_outputs_separate.png: outputs at the separating iteration coloured by has_fast, chosen cluster marked;
- useful_moves_gd_toward_sam.png: GD, GD+USEFUL, SAM, SAM+USEFUL and random upsampling;
- beta_d_sweep.png: test accuracy against beta_d;
- useful_ablation.png: slow-only test accuracy against the separating iteration, for each k.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from theory.plumbing.atomic import atomic_open  # noqa: E402
from theory.predictions import learning_time, recurrence, sam_recurrence, sam_learning_times  # noqa: E402

from .experiments import ReproduceResults  # noqa: E402
from .files import FIGURE_FORMAT  # noqa: E402

__all__ = ["FIGURES", "draw_all"]

#: The report's figures, in the order they are drawn.
FIGURES = ("gd_fast_first.png", "sam_more_uniform.png", "theory_matches_simulation.png", "sam_generalizes_better.png",
           "early_outputs_separate.png", "useful_moves_gd_toward_sam.png", "beta_d_sweep.png", "useful_ablation.png")

COLORS = {"gd": "tab:blue", "sam": "tab:red", "gd_useful": "tab:green", "sam_useful": "tab:purple", "gd_random": "tab:gray"}
LABELS = {"gd": "GD", "sam": "SAM", "gd_useful": "GD+USEFUL", "sam_useful": "SAM+USEFUL", "gd_random": "GD+random upsampling"}


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, metadata={"Software": FIGURE_FORMAT})
    plt.close(fig)


def _mean_std(trajs, name):
    vals = np.stack([t.series[name] for t in trajs])
    return trajs[0].series["iterations"], vals.mean(0), vals.std(0)


def _band(ax, x, m, s, color, label, ls="-"):
    ax.plot(x, m, color=color, label=label, ls=ls)
    ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, lw=0)


def draw_alignment(path, base, problem, gd, sam):
    T = base.iterations
    p = problem
    a0e, a0d = p.W0 @ p.train.v_e, p.W0 @ p.train.v_d
    q = float(p.train.has_fast.mean())
    pe = recurrence(a0e, base.lr, q, base.beta_e, T).max(1)
    pd = recurrence(a0d, base.lr, 1.0, base.beta_d, T).max(1)
    se, sd = sam_recurrence(a0e, a0d, lr=base.lr, rho=base.rho, q_e=q, beta_e=base.beta_e, beta_d=base.beta_d, iterations=T)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, traj, (pf, ps), name in ((axes[0], gd, (pe, pd), "GD"), (axes[1], sam, (se.max(1), sd.max(1)), "SAM")):
        it = traj.series["iterations"]
        ax.plot(it, traj.series["align_fast"], color="tab:orange", label="fast feature (simulated)")
        ax.plot(it, traj.series["align_slow"], color="tab:cyan", label="slow feature (simulated)")
        t = np.arange(T + 1)
        ax.plot(t, np.where(np.isfinite(pf), pf, np.nan), "--", color="tab:orange", alpha=0.8, label="fast (recurrence)")
        ax.plot(t, np.where(np.isfinite(ps), ps, np.nan), "--", color="tab:cyan", alpha=0.8, label="slow (recurrence)")
        for key, c in (("fast_learned_at", "tab:orange"), ("slow_learned_at", "tab:cyan")):
            if getattr(traj, key) is not None:
                ax.axvline(getattr(traj, key), color=c, lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylim(min(a0e.max(), a0d.max()) / 2, 20)
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlim(left=0)
        ax.set_title(f"{name}: alignment max_j <w_j, v> (seed 0)")
        ax.set_xlabel("iteration")
    axes[0].set_ylabel("alignment")
    axes[0].legend(fontsize=8, loc="upper left")
    _save(fig, path)


def draw_gap(path, runs):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, trajs in runs.items():
        x = trajs[0].series["iterations"]
        gaps = np.stack([t.series["align_fast"] - t.series["align_slow"] for t in trajs])
        _band(ax, x, gaps.mean(0), gaps.std(0), COLORS[key], LABELS[key])
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlim(left=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("align_fast - align_slow")
    ax.set_title("Fast-minus-slow alignment gap (mean ± std over seeds)")
    ax.legend(fontsize=8)
    _save(fig, path)


def draw_theory(path, base, problems, gd, sam):
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for trajs, key, fn in ((gd, "gd", None), (sam, "sam", "sam")):
        sim, pred = [], []
        for p, t in zip(problems, trajs):
            a0e, a0d = p.W0 @ p.train.v_e, p.W0 @ p.train.v_d
            q = float(p.train.has_fast.mean())
            if fn is None:
                tp = learning_time(a0e, base.lr, q, base.beta_e, base.theta, max_iterations=10 * base.iterations)
            else:
                tp = sam_learning_times(a0e, a0d, lr=base.lr, rho=base.rho, q_e=q, beta_e=base.beta_e,
                                        beta_d=base.beta_d, iterations=base.iterations, theta=base.theta)[0]
            if tp is not None and t.fast_learned_at is not None:
                sim.append(t.fast_learned_at)
                pred.append(tp)
        ax.scatter(pred, sim, color=COLORS[key], label=f"{LABELS[key]} ({'recurrence' if fn is None else 'SAM recurrence'})")
    lim = ax.get_xlim()[1] * 1.1 if ax.collections else 1
    x = np.linspace(0, lim, 10)
    ax.plot(x, x, "k-", lw=0.8)
    ax.fill_between(x, 0.9 * x, 1.1 * x, color="k", alpha=0.08, label="±10%")
    ax.set_xlabel("predicted fast-feature learning iteration")
    ax.set_ylabel("simulated")
    ax.set_title("Theory vs simulation (one point per seed)")
    ax.legend(fontsize=8)
    _save(fig, path)


def draw_slow_acc(path, runs, title):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, trajs in runs.items():
        x, m, s = _mean_std(trajs, "test_acc_slow")
        _band(ax, x, m, s, COLORS[key], LABELS[key])
    ax.set_xlabel("iteration")
    ax.set_ylabel("slow-only test accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def draw_separation(path, base, problem, split):
    y, fast = problem.train.y, problem.train.has_fast
    chosen = split.partition.upsample
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.25, 0.25, len(y))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for mask, color, label in ((fast, "tab:orange", "has fast feature"), (~fast, "tab:cyan", "slow-only")):
        ax.scatter(split.outputs[mask], y[mask] + jitter[mask], s=14, color=color, label=label, alpha=0.8)
    ax.scatter(split.outputs[chosen], y[chosen] + jitter[chosen], s=60, facecolors="none", edgecolors="k",
               label=f"upsampled cluster ({int(chosen.sum())})")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yticks([-1, 1])
    ax.set_ylabel("label y")
    ax.set_xlabel(f"network output f(x) at iteration {base.separate_at}")
    ax.set_title(f"Early outputs separate: precision {split.precision:.2f}, recall {split.recall:.2f} (seed 0)")
    ax.legend(fontsize=8, loc="center left")
    _save(fig, path)


def draw_useful(path, runs):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    ax = axes[0]
    for key, trajs in runs.items():
        x, m, _ = _mean_std(trajs, "align_fast")
        ax.plot(x, m, color=COLORS[key], label=f"{LABELS[key]} fast")
        x, m, _ = _mean_std(trajs, "align_slow")
        ax.plot(x, m, color=COLORS[key], ls="--", label=f"{LABELS[key]} slow")
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=100)
    ax.set_xlim(left=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("alignment (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    keys = list(runs)
    means = [np.mean([t.test_acc_slow[-1] for t in runs[k]]) for k in keys]
    stds = [np.std([t.test_acc_slow[-1] for t in runs[k]]) for k in keys]
    ax.bar(range(len(keys)), means, yerr=stds, color=[COLORS[k] for k in keys], capsize=3)
    ax.set_xticks(range(len(keys)), [LABELS[k].replace("+", "+\n").replace(" upsampling", "\nupsampling") for k in keys], fontsize=8)
    finite = [m for m in means if np.isfinite(m)]
    if finite:
        ax.set_ylim(min(finite) - 0.1, 1.0)
    else:  # no test example lacks the fast feature (e.g. alpha = 1, or a small test set)
        ax.text(0.5, 0.5, "no slow-only test examples", transform=ax.transAxes, ha="center")
    ax.set_ylabel("final slow-only test accuracy\n(bars: std over seeds; paired differences in claims.json)")
    _save(fig, path)


def draw_sweep(path, sweep_cfgs, sweep, grid):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "test_acc", "test accuracy"), (axes[1], "test_acc_slow", "slow-only test accuracy")):
        for opt in ("gd", "sam"):
            m, s = [], []
            for b in grid:
                vals = [t.series[metric][-1] for c, t in zip(sweep_cfgs, sweep) if c.optimizer == opt and c.beta_d == b]
                m.append(np.mean(vals))
                s.append(np.std(vals))
            ax.errorbar(grid, m, yerr=s, color=COLORS[opt], label=LABELS[opt], marker="o", capsize=3)
        ax.set_xlabel("beta_d (slow feature strength)")
        ax.set_ylabel(title)
        ax.legend()
    _save(fig, path)


def draw_ablation(path, abl_cfgs, ablation):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ks = sorted({c.upsample_factor for c in abl_cfgs})
    for k in ks:
        ts = sorted({c.separate_at for c in abl_cfgs if c.upsample_factor == k})
        m = [np.mean([t.test_acc_slow[-1] for c, t in zip(abl_cfgs, ablation) if c.upsample_factor == k and c.separate_at == s]) for s in ts]
        ax.plot(ts, m, marker="o", label=f"k = {k}")
    ax.set_xscale("log")
    ax.set_xlabel("separating iteration")
    ax.set_ylabel("GD+USEFUL slow-only test accuracy")
    ax.set_title("USEFUL ablation (mean over seeds)")
    ax.legend()
    _save(fig, path)


def draw_all(results: ReproduceResults, out: str | Path) -> list[Path]:
    """Draw :data:`FIGURES` into ``out`` (each written atomically); returns their paths."""
    out = Path(out)
    r = results
    base, problems, gd, sam = r.base, r.problems, r.gd, r.sam
    drawings = {
        "gd_fast_first.png": lambda p: draw_alignment(p, base, problems[0], gd[0], sam[0]),
        "sam_more_uniform.png": lambda p: draw_gap(p, {"gd": gd, "sam": sam, "gd_useful": r.gd_useful}),
        "theory_matches_simulation.png": lambda p: draw_theory(p, base, problems, gd, sam),
        "sam_generalizes_better.png": lambda p: draw_slow_acc(p, {"gd": gd, "sam": sam},
                                                              "Slow-only test accuracy (mean ± std)"),
        "early_outputs_separate.png": lambda p: draw_separation(p, base, problems[0], r.gd_splits[0]),
        "useful_moves_gd_toward_sam.png": lambda p: draw_useful(p, {"gd": gd, "gd_useful": r.gd_useful, "sam": sam,
                                                                    "sam_useful": r.sam_useful,
                                                                    "gd_random": r.gd_random}),
        "beta_d_sweep.png": lambda p: draw_sweep(p, r.sweep_cfgs, r.sweep, r.settings.beta_d_grid),
        "useful_ablation.png": lambda p: draw_ablation(p, r.abl_cfgs, r.ablation),
    }
    paths = []
    for name in FIGURES:
        drawings[name](out / name)
        paths.append(out / name)
    return paths
