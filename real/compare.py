"""``useful-train compare``: test error and training time over run directories (the paper's Figure 4).

Runs are grouped by :func:`group_key` (the seeds of one configuration form a group), linked to their
baseline, reference and compute-matched groups (:func:`group_runs`) and paired with them seed by seed; the
table's columns are described in docs/training.md ("Comparing runs").
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from theory.plumbing.config import ConfigError

from .config import RUN_CONTROL_FIELDS

__all__ = ["GROUP_IGNORE", "METHOD_FIELDS", "group_key", "RunRecord", "Group", "load_runs", "group_runs",
           "paired_difference", "pair_groups", "paired_time_ratio", "compare_markdown", "plot_compare"]

# The seed, the fields that say how to run rather than what to compute, and what is only recorded.
GROUP_IGNORE = ("seed", "deterministic", "group_window", *RUN_CONTROL_FIELDS)
# Fields the label names by itself (the others appear as "field=value" when they differ between groups).
_LABELLED = ("optimizer", "useful", "partition", "upweight", "trivial_augment")
_OPTIMIZER_ORDER = {"sgd": 0, "sam": 1, "asam": 2}
_USEFUL_FIELDS = ("separate_epoch", "separate_iteration", "upsample_factor", "partition", "quantile", "upweight")
# What makes a "method": groups equal in every other field are paired seed by seed.
METHOD_FIELDS = ("optimizer", "rho", "useful", *_USEFUL_FIELDS)
MIN_PAIRS = 3  # fewer pairs: the mean paired difference without an interval
PLOT_FORMATS = ("png", "pdf", "svg")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


@dataclass
class RunRecord:
    path: Path
    config: dict
    summary: dict
    seconds: float | None

    @property
    def error(self) -> float:
        return 100.0 * (1.0 - self.summary["final_test_acc"])


@dataclass
class Group:
    key: dict  # the configuration without the ignored fields
    runs: list[RunRecord] = field(default_factory=list)
    label: str = ""
    baseline: "Group | None" = None  # for the relative time (unpaired)
    reference: "Group | None" = None  # the same setting with the baseline optimizer, no USEFUL (paired)
    matched: "Group | None" = None  # USEFUL's compute-matched baseline: partition = random (paired)

    @property
    def error_mean(self) -> float:
        return _mean([r.error for r in self.runs])

    @property
    def error_std(self) -> float:
        errors = [r.error for r in self.runs]
        return float(np.std(errors, ddof=1)) if len(errors) > 1 else (0.0 if errors else math.nan)

    def errors_by_seed(self) -> dict[int, float]:
        return {r.config.get("seed"): r.error for r in self.runs}

    def train_seconds_by_seed(self) -> dict[int, float]:
        return {r.config.get("seed"): float(v) for r in self.runs
                if _number(v := r.summary.get("train_seconds")) and v > 0}

    @property
    def seconds(self) -> float:
        return _mean([r.seconds for r in self.runs if r.seconds is not None])

    @property
    def relative_time(self) -> float:
        has_baseline = self.baseline is not None and self.baseline.seconds > 0  # NaN seconds: no baseline
        return self.seconds / self.baseline.seconds if has_baseline else math.nan


def _run_seconds(path: Path, summary: dict) -> float | None:
    from .rundir import read_metrics

    if _number(wall := summary.get("wall_seconds")):
        return float(wall)
    seconds = [float(v) for r in read_metrics(path) if _number(v := r.get("seconds"))]
    return sum(seconds) if seconds else None


def _skip_reason(summary: dict | None) -> str | None:
    if summary is None:
        return "no summary (unfinished or still running)"
    if (status := summary.get("status")) != "completed":
        return f"status {status!r}" + (f": {summary['message']}" if summary.get("message") else "")
    if not _number(acc := summary.get("final_test_acc")) or not 0.0 <= acc <= 1.0:
        return f"final_test_acc is {acc!r}, not an accuracy in [0, 1]"
    return None


def load_runs(run_dirs: Sequence[str | Path]) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """The completed runs and ``(path, reason)`` of the skipped ones (a folder given twice counts once)."""
    from .rundir import iter_run_dirs, read_config, read_summary

    runs, skipped = [], []
    for path in iter_run_dirs(run_dirs):
        config, summary = read_config(path), read_summary(path)
        if (reason := _skip_reason(summary)) is not None:
            skipped.append((str(path), reason))
        else:
            runs.append(RunRecord(path, config, summary, _run_seconds(path, summary)))
    return runs, skipped


def group_key(config: dict) -> dict:
    """A run's group: the configuration without :data:`GROUP_IGNORE` and the fields without effect in it."""
    unused = set(GROUP_IGNORE)
    if not config.get("useful"):
        unused.update(_USEFUL_FIELDS)
    elif config.get("partition") != "quantile":
        unused.add("quantile")
    if config.get("optimizer") == "sgd":
        unused.add("rho")
    if config.get("dataset") != "synthetic":
        unused.update(("synthetic_train", "synthetic_test"))
    return {k: v for k, v in config.items() if k not in unused}


def _method_label(key: dict) -> str:
    label = str(key.get("optimizer", "?")).upper() + ("+TA" if key.get("trivial_augment") else "")
    if key.get("useful"):
        partition = key.get("partition", "useful")
        label += "+USEFUL" if partition in (None, "useful") else f"+{partition}"
        label += "(upweight)" if key.get("upweight") else ""
    return label


def _is_baseline(key: dict, baseline_optimizer: str) -> bool:
    return key.get("optimizer") == baseline_optimizer and not key.get("useful")


def _setting(key: dict) -> str:
    return json.dumps({k: v for k, v in key.items() if k not in METHOD_FIELDS}, sort_keys=True)


def _label_and_link(groups: Sequence[Group], baseline_optimizer: str) -> None:
    """Each group's label (the method, and the fields that differ between groups as ``field=value``), its
    paired ``reference`` and ``matched`` groups, and its ``baseline`` for the time: the same data set and
    model with the baseline optimizer, no USEFUL (among several, the closest)."""
    fields = sorted({f for g in groups for f in g.key})
    varying = [f for f in fields if f not in _LABELLED
               and len({json.dumps(g.key[f], sort_keys=True) for g in groups if f in g.key}) > 1]
    for g in groups:
        extra = ", ".join(f"{f}={','.join(map(str, v)) or '[]' if isinstance(v, list) else v}"
                          for f in varying if f in g.key for v in [g.key[f]])
        g.label = _method_label(g.key) + (f" ({extra})" if extra else "")
        same = [b for b in groups if b is not g and _setting(b.key) == _setting(g.key)]
        if not _is_baseline(g.key, baseline_optimizer):
            g.reference = next((b for b in same if _is_baseline(b.key, baseline_optimizer)), None)
        if g.key.get("useful") and g.key.get("partition") != "random":
            g.matched = next((b for b in same if b.key == {**g.key, "partition": "random"}), None)
        candidates = [b for b in groups if _is_baseline(b.key, baseline_optimizer)
                      and (b.key.get("dataset"), b.key.get("model")) == (g.key.get("dataset"), g.key.get("model"))]
        g.baseline = min(candidates, default=None, key=lambda b: sum(f != "optimizer" and b.key.get(f) != g.key.get(f)
                                                                     for f in fields))


def group_runs(runs: Sequence[RunRecord], *, baseline_optimizer: str = "sgd") -> list[Group]:
    """The groups, sorted, labelled and linked (:func:`_label_and_link`); a configuration and seed twice is refused."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = group_key(run.config)
        group = groups.setdefault(json.dumps(key, sort_keys=True), Group(key=key))
        twin = next((r for r in group.runs if r.config.get("seed") == run.config.get("seed")), None)
        if twin is not None:  # the same configuration and seed twice would count as two seeds
            raise ConfigError("RUN_DIR", message=f"RUN_DIR: {twin.path} and {run.path} are the same configuration "
                                                 f"with the same seed ({run.config.get('seed')}); give one of them")
        group.runs.append(run)
    result = list(groups.values())
    _label_and_link(result, baseline_optimizer)
    result.sort(key=lambda g: (str(g.key.get("dataset")), str(g.key.get("model")), bool(g.key.get("trivial_augment")),
                               _OPTIMIZER_ORDER.get(g.key.get("optimizer"), 9), bool(g.key.get("useful")), g.label))
    return result


def _spread(values: np.ndarray) -> dict[str, Any]:
    n = int(values.size)
    return {"mean": float(values.mean()) if n else None, "std": float(values.std(ddof=1)) if n > 1 else None, "n": n}


def paired_difference(a, b, *, confidence: float = 0.95) -> dict[str, Any]:
    """Mean of the paired differences ``a_i - b_i`` with its ``confidence`` t-interval ``low``, ``high``
    (None for fewer than 2 pairs), ``std`` (ddof = 1), ``n`` and ``per_seed``."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = {**_spread(d), "low": None, "high": None, "confidence": confidence, "per_seed": [float(x) for x in d]}
    if out["n"] > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, out["n"] - 1)) * out["std"] / math.sqrt(out["n"])
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def _shared_seeds(g: Group, other: Group, by_seed) -> tuple[list, np.ndarray, np.ndarray]:
    mine, theirs = by_seed(g), by_seed(other)
    seeds = sorted(set(mine) & set(theirs), key=str)
    return seeds, np.array([mine[s] for s in seeds], dtype=np.float64), np.array([theirs[s] for s in seeds])


def pair_groups(g: Group, other: Group | None) -> dict[str, Any] | None:
    """Test error of ``g`` minus ``other`` (points), paired over their shared ``seeds`` (None without ``other``)."""
    if other is None:
        return None
    seeds, mine, theirs = _shared_seeds(g, other, Group.errors_by_seed)
    return {**paired_difference(mine, theirs), "seeds": seeds}


def paired_time_ratio(g: Group, other: Group | None) -> dict[str, Any] | None:
    """``train_seconds`` of ``g`` over ``other``'s, paired over their shared ``seeds`` (None without ``other``)."""
    if other is None:
        return None
    seeds, mine, theirs = _shared_seeds(g, other, Group.train_seconds_by_seed)
    ratios = mine / theirs
    return {**_spread(ratios), "seeds": seeds, "per_seed": [float(x) for x in ratios]}


def _num(v: float | None, digits: int = 2, unit: str = "") -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}{unit}"


def _ratio_cell(g: Group, baseline_optimizer: str) -> str:
    if g.reference is None:
        return "1 (reference)" if _is_baseline(g.key, baseline_optimizer) else "-"
    d = paired_time_ratio(g, g.reference)
    if d["n"] == 0:
        return "no shared seeds"
    spread = f" ± {d['std']:.2f}" if d["std"] is not None else ""
    return f"{d['mean']:.2f}x{spread} ({d['n']} seed{'s' if d['n'] > 1 else ''})"


def _paired_cell(d: dict | None) -> str:
    if d is None:
        return "-"
    if d["n"] == 0:
        return "no shared seeds"
    if d["n"] < MIN_PAIRS:
        return f"{d['mean']:+.2f} ({d['n']} pair{'s' if d['n'] > 1 else ''}: fewer than {MIN_PAIRS}, no interval)"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({d['n']} pairs)"


def compare_markdown(groups: Sequence[Group], skipped: Sequence[tuple[str, str]] = (), *,
                     baseline_optimizer: str = "sgd") -> str:
    """The markdown table, a note on the paired columns, and the list of skipped runs."""
    base = baseline_optimizer.upper()
    header = ["configuration", "seeds", "test error (%) mean", "std", "time (s)", f"time vs {base}",
              f"train time vs {base} (paired)", f"error vs {base} (paired)", "error vs random upsampling (paired)"]
    rows = [header, ["---"] + ["---:"] * (len(header) - 1)]
    rows += [[g.label, str(len(g.runs)), _num(g.error_mean), _num(g.error_std), _num(g.seconds, 1),
              _num(g.relative_time, unit="x"), _ratio_cell(g, baseline_optimizer),
              _paired_cell(pair_groups(g, g.reference)), _paired_cell(pair_groups(g, g.matched))] for g in groups]
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "Paired: mean over shared seeds of (this group's test error - the other's), in points, with its "
              f"95% t-interval; groups differing only in the method ({', '.join(METHOD_FIELDS)}) are paired.",
              f"Train time vs {base}: per shared seed, each run summary's train_seconds (training epochs of the whole "
              f"run, USEFUL's pre-split phase included) over the {base} run of the same setting and seed; mean ± "
              "std over seeds."]
    if skipped:
        lines += ["", f"Skipped {len(skipped)} run(s):", *(f"- {path}: {reason}" for path, reason in skipped)]
    return "\n".join(lines)


def _panel(ax, title: str, members: Sequence[Group]) -> None:
    """One data set and model: bars of test error (std error bars), the relative time under each."""
    xs, means, stds = range(len(members)), [g.error_mean for g in members], [g.error_std for g in members]
    colors = [f"C{_OPTIMIZER_ORDER.get(g.key.get('optimizer'), 3) * 2 + bool(g.key.get('useful'))}" for g in members]
    ax.bar(xs, means, yerr=stds, capsize=4, color=colors, edgecolor="black", linewidth=0.6)
    finite = [(m - s, m + s) for m, s in zip(means, stds) if math.isfinite(m)]
    if finite:
        bottom, top = min(lo for lo, _ in finite), max(hi for _, hi in finite)
        span = max(top - bottom, 0.5)
        ax.set_ylim(max(0.0, bottom - 0.6 * span), top + 0.3 * span)
    wide = len(members) > 4
    times = [f"{t:.2f}x time" if math.isfinite(t := g.relative_time) else "time n/a" for g in members]
    ax.set_xticks(list(xs), [f"{g.label}\n{t}" for g, t in zip(members, times)], fontsize=8,
                  rotation=30 if wide else 0, ha="right" if wide else "center")
    ax.set(ylabel="test error (%)", title=title)
    ax.grid(axis="y", alpha=0.3)


def plot_compare(groups: Sequence[Group], path: str | Path, *, baseline_optimizer: str = "sgd") -> None:
    """The bar plot, one panel per data set and model, written atomically (format: :func:`plot_format`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from theory.plumbing.atomic import atomic_open

    panels: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        panels.setdefault((str(g.key.get("dataset")), str(g.key.get("model"))), []).append(g)
    widest, columns = max((len(p) for p in panels.values()), default=1), max(len(panels), 1)
    fig, axes = plt.subplots(1, columns, figsize=(max(3.0, 1.3 * widest + 1.0) * columns, 4.2), squeeze=False)
    for ax, ((dataset, model), members) in zip(axes[0], panels.items()):
        _panel(ax, f"{dataset}, {model}", members)
    fig.suptitle(f"test error (mean ± std over seeds); training time relative to {baseline_optimizer.upper()}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=plot_format(path), dpi=120)
    plt.close(fig)


def plot_format(path: str | Path) -> str:
    """The figure's format from ``path``'s suffix; another suffix, or a folder, is a ConfigError on ``--out``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("--out", message=f"--out: {path} is a folder; give a file name such as fig4.png")
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ConfigError("--out", str(path), "a file name ending in " + ", ".join("." + f for f in PLOT_FORMATS))
    return suffix


def compare(run_dirs: Sequence[str | Path], *, out: str | Path | None = None,
            baseline_optimizer: str = "sgd") -> tuple[str, list[Group], list[tuple[str, str]]]:
    """``(markdown, groups, skipped)``, and the plot to ``out`` (checked before anything is read)."""
    if out is not None:
        plot_format(out)
    runs, skipped = load_runs(run_dirs)
    groups = group_runs(runs, baseline_optimizer=baseline_optimizer)
    table = compare_markdown(groups, skipped, baseline_optimizer=baseline_optimizer)
    if out is not None:
        plot_compare(groups, out, baseline_optimizer=baseline_optimizer)
    return table, groups, skipped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of useful-train run")
    parser.add_argument("--out", metavar="PLOT.png", default=None,
                        help="also draw the bar plot (Figure 4 style): .png, .pdf or .svg")
    parser.add_argument("--baseline-optimizer", choices=("sgd", "sam", "asam"), default="sgd",
                        help="training time is relative to this optimizer's group without USEFUL (default sgd)")


def command(args: argparse.Namespace) -> int:
    table, groups, _ = compare(args.runs, out=args.out, baseline_optimizer=args.baseline_optimizer)
    print(table)
    if args.out is not None:
        print(f"\nplot: {args.out}")
    return 0 if groups else 1
