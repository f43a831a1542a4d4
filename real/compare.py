"""``useful-train compare``: test error and training time over run directories (the paper's Figure 4).

Runs are grouped by their ``config.json`` ignoring the seed, ``deterministic``, ``group_window`` and the
run-control fields of :data:`real.config.RUN_CONTROL_FIELDS` (:data:`GROUP_IGNORE`), so the seeds of
one configuration form one group.  Per group:

* test error ``1 - final_test_acc`` (summary.json), mean and sample standard deviation (``ddof = 1``,
  0 for one seed) over seeds, in %;
* training time: mean over seeds of summary.json's ``wall_seconds`` (the whole run, USEFUL's pre-split
  epochs and split included; the sum of metrics.jsonl's ``seconds`` when summary.json has none),
  relative to the baseline group of the same data set and model: the group with ``optimizer ==
  --baseline-optimizer`` (default sgd) and without USEFUL; among several, the one whose configuration
  differs from the group in the fewest fields;
* training time relative to SGD, paired (the paper's "time to train w.r.t. SGD"): per shared seed,
  summary.json's ``train_seconds`` (the time in training epochs of the whole run: USEFUL's pre-split
  epochs included, evaluation and the split's outputs not) over that of the same seed in the
  reference group (below); mean and sample standard deviation of the ratios over seeds
  (:func:`paired_time_ratio`).

Paired statistics: groups that differ only in the method (:data:`METHOD_FIELDS`: optimizer, rho,
USEFUL and its settings) and share seeds are paired, seed by seed.  Each group is compared with

* its reference: the group of the same setting trained with ``--baseline-optimizer`` without USEFUL
  (``vs SGD``), and, for a USEFUL group,
* its compute-matched baseline: the same USEFUL settings with ``partition = random`` (random
  upsampling of as many examples per class, as many steps);

by the mean over shared seeds of the paired difference of test error (group minus other, in
points; negative is better) with its 95 % t-interval (:func:`paired_difference`).  Fewer than 3
pairs give the mean without an interval, and the table says so.

Runs whose summary.json is missing or whose status is not ``completed`` are listed as skipped with
the reason.  With ``--out PLOT.png`` a bar plot (one panel per data set and model) shows the test error
with standard-deviation error bars and the relative training time under each bar.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from theory.plumbing.config import ConfigError

from .config import RUN_CONTROL_FIELDS

__all__ = ["GROUP_IGNORE", "METHOD_FIELDS", "group_key", "RunRecord", "Group", "load_runs", "group_runs",
           "paired_difference", "pair_groups", "paired_time_ratio", "compare_markdown", "plot_compare",
]

# The seed, the fields that say how to run rather than what to compute, and what is only recorded.
GROUP_IGNORE = ("seed", "deterministic", "group_window", *RUN_CONTROL_FIELDS)
# Fields the label names by itself (the others appear as "field=value" when they differ between groups).
_LABELLED = ("optimizer", "useful", "partition", "upweight", "trivial_augment")
_OPTIMIZER_ORDER = {"sgd": 0, "sam": 1, "asam": 2}
# What makes a "method": groups equal in every other field are paired seed by seed.
METHOD_FIELDS = ("optimizer", "rho", "useful", "separate_epoch", "separate_iteration", "upsample_factor", "partition",
                 "quantile", "upweight")
MIN_PAIRS = 3  # fewer pairs: the mean paired difference without an interval


@dataclass
class RunRecord:
    path: Path
    config: dict
    summary: dict
    seconds: float | None


@dataclass
class Group:
    key: dict  # the configuration without the ignored fields
    runs: list[RunRecord] = field(default_factory=list)
    label: str = ""
    baseline: "Group | None" = None
    reference: "Group | None" = None  # the same setting with the baseline optimizer, no USEFUL (paired)
    matched: "Group | None" = None  # USEFUL's compute-matched baseline: partition = random (paired)

    @property
    def errors(self) -> list[float]:
        return [100.0 * (1.0 - r.summary["final_test_acc"]) for r in self.runs]

    @property
    def error_mean(self) -> float:
        e = self.errors
        return sum(e) / len(e) if e else math.nan

    @property
    def error_std(self) -> float:
        e = self.errors
        if len(e) < 2:
            return 0.0 if e else math.nan
        m = sum(e) / len(e)
        return math.sqrt(sum((x - m) ** 2 for x in e) / (len(e) - 1))

    def errors_by_seed(self) -> dict[int, float]:
        return {r.config.get("seed"): 100.0 * (1.0 - r.summary["final_test_acc"]) for r in self.runs}

    def train_seconds_by_seed(self) -> dict[int, float]:
        """summary.json's ``train_seconds`` per seed (runs without a positive finite one left out)."""
        out = {}
        for r in self.runs:
            v = r.summary.get("train_seconds")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
                out[r.config.get("seed")] = float(v)
        return out

    @property
    def seconds(self) -> float:
        s = [r.seconds for r in self.runs if r.seconds is not None]
        return sum(s) / len(s) if s else math.nan

    @property
    def relative_time(self) -> float:
        if self.baseline is None or not self.baseline.seconds > 0:
            return math.nan
        return self.seconds / self.baseline.seconds


def _run_seconds(path: Path, summary: dict) -> float | None:
    from .rundir import read_metrics

    wall = summary.get("wall_seconds")
    if isinstance(wall, (int, float)) and not isinstance(wall, bool) and math.isfinite(wall):
        return float(wall)
    seconds = [r.get("seconds") for r in read_metrics(path)]
    numbers = [float(v) for v in seconds if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(numbers) if numbers else None


def load_runs(run_dirs: Sequence[str | Path]) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """The completed runs and ``(path, reason)`` of the skipped ones.

    A folder given twice (or by two spellings of one path) counts once.  A path that is not a run
    directory of useful-train is a :class:`ConfigError`; a missing summary, a status other than
    ``completed`` or a final test accuracy that is not a number in [0, 1] skips the run."""
    from .rundir import iter_run_dirs, read_config, read_summary

    runs: list[RunRecord] = []
    skipped: list[tuple[str, str]] = []
    for path in iter_run_dirs(run_dirs):
        config = read_config(path)
        summary = read_summary(path)
        if summary is None:
            skipped.append((str(path), "no summary (unfinished or still running)"))
            continue
        status = summary.get("status")
        if status != "completed":
            message = summary.get("message") or ""
            skipped.append((str(path), f"status {status!r}" + (f": {message}" if message else "")))
            continue
        acc = summary.get("final_test_acc")
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not (0.0 <= acc <= 1.0):
            skipped.append((str(path), f"final_test_acc is {acc!r}, not an accuracy in [0, 1]"))
            continue
        runs.append(RunRecord(path, config, summary, _run_seconds(path, summary)))
    return runs, skipped


_USEFUL_FIELDS = ("separate_epoch", "separate_iteration", "upsample_factor", "partition", "quantile", "upweight")


def group_key(config: dict) -> dict:
    """The fields that define a run's group: the configuration without :data:`GROUP_IGNORE` and
    without fields that have no effect in it (USEFUL's fields without ``useful``, ``quantile`` unless
    the quantile partition, ``rho`` under SGD, the synthetic sizes for a real data set)."""
    key = {k: v for k, v in config.items() if k not in GROUP_IGNORE}
    unused = set()
    if not key.get("useful"):
        unused.update(_USEFUL_FIELDS)
    elif key.get("partition") != "quantile":
        unused.add("quantile")
    if key.get("optimizer") == "sgd":
        unused.add("rho")
    if key.get("dataset") != "synthetic":
        unused.update(("synthetic_train", "synthetic_test"))
    return {k: v for k, v in key.items() if k not in unused}


def _method_label(key: dict) -> str:
    label = str(key.get("optimizer", "?")).upper()
    if key.get("trivial_augment"):
        label += "+TA"
    if key.get("useful"):
        partition = key.get("partition", "useful")
        label += "+USEFUL" if partition in (None, "useful") else f"+{partition}"
        if key.get("upweight"):
            label += "(upweight)"
    return label


def _fmt_value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "[]"
    return str(v)


def group_runs(runs: Sequence[RunRecord], *, baseline_optimizer: str = "sgd") -> list[Group]:
    """Groups (sorted by data set, model, optimizer, TrivialAugment, USEFUL), labelled, each with its
    baseline group for the relative training time."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = group_key(run.config)
        text = json.dumps(key, sort_keys=True)
        group = groups.setdefault(text, Group(key=key))
        twin = next((r for r in group.runs if r.config.get("seed") == run.config.get("seed")), None)
        if twin is not None:  # the same configuration and seed twice would count as two seeds
            raise ConfigError("RUN_DIR", message=f"RUN_DIR: {twin.path} and {run.path} are the same configuration "
                                                 f"with the same seed ({run.config.get('seed')}); give one of them")
        group.runs.append(run)
    result = list(groups.values())
    all_fields = sorted({f for g in result for f in g.key})
    varying = [f for f in all_fields
               if f not in _LABELLED and len({json.dumps(g.key[f], sort_keys=True) for g in result if f in g.key}) > 1]
    for g in result:
        extra = ", ".join(f"{f}={_fmt_value(g.key[f])}" for f in varying if f in g.key)
        g.label = _method_label(g.key) + (f" ({extra})" if extra else "")
    for g in result:  # paired references: the same setting, another method
        same = [b for b in result if b is not g and _setting(b.key) == _setting(g.key)]
        if g.key.get("optimizer") != baseline_optimizer or g.key.get("useful"):
            g.reference = next((b for b in same if b.key.get("optimizer") == baseline_optimizer
                                and not b.key.get("useful")), None)
        if g.key.get("useful") and g.key.get("partition") != "random":
            want = {**g.key, "partition": "random"}
            g.matched = next((b for b in same if b.key == want), None)
    for g in result:
        candidates = [b for b in result
                      if b.key.get("dataset") == g.key.get("dataset") and b.key.get("model") == g.key.get("model")
                      and b.key.get("optimizer") == baseline_optimizer and not b.key.get("useful")]
        if candidates:
            g.baseline = min(candidates, key=lambda b: sum(
                1 for f in all_fields if f != "optimizer" and b.key.get(f) != g.key.get(f)))
    result.sort(key=lambda g: (str(g.key.get("dataset")), str(g.key.get("model")),
                               bool(g.key.get("trivial_augment")),
                               _OPTIMIZER_ORDER.get(g.key.get("optimizer"), 9), bool(g.key.get("useful")), g.label))
    return result


def paired_difference(a, b, *, confidence: float = 0.95) -> dict[str, Any]:
    """Mean of the paired differences ``a_i - b_i`` with its ``confidence`` t-interval.

    Returns ``mean``, ``std`` (ddof = 1), ``n``, ``low``, ``high`` (``mean -/+ t_{n-1} std / sqrt(n)``,
    scipy.stats.t; None for fewer than 2 pairs) and the per-pair differences ``per_seed``."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = int(d.size)
    out = {"mean": float(d.mean()) if n else None, "std": float(d.std(ddof=1)) if n > 1 else None, "n": n,
           "low": None, "high": None, "confidence": confidence, "per_seed": [float(x) for x in d]}
    if n > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * out["std"] / math.sqrt(n)
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def _setting(key: dict) -> str:
    return json.dumps({k: v for k, v in key.items() if k not in METHOD_FIELDS}, sort_keys=True)


def pair_groups(g: Group, other: Group | None) -> dict[str, Any] | None:
    """Test error of ``g`` minus ``other`` (points), paired over their shared seeds (None without ``other``)."""
    if other is None:
        return None
    mine, theirs = g.errors_by_seed(), other.errors_by_seed()
    seeds = sorted(set(mine) & set(theirs), key=str)
    out = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
    out["seeds"] = seeds
    return out


def paired_time_ratio(g: Group, other: Group | None) -> dict[str, Any] | None:
    """``train_seconds`` of ``g`` over ``other``'s, seed by seed over their shared seeds: ``mean``,
    ``std`` (ddof = 1; None for one seed), ``n``, ``seeds``, ``per_seed`` (None without ``other``)."""
    if other is None:
        return None
    mine, theirs = g.train_seconds_by_seed(), other.train_seconds_by_seed()
    seeds = sorted(set(mine) & set(theirs), key=str)
    ratios = np.array([mine[s] / theirs[s] for s in seeds], dtype=np.float64)
    n = int(ratios.size)
    return {"mean": float(ratios.mean()) if n else None, "std": float(ratios.std(ddof=1)) if n > 1 else None,
            "n": n, "seeds": seeds, "per_seed": [float(x) for x in ratios]}


def _ratio_cell(g: Group, baseline_optimizer: str) -> str:
    if g.reference is None:
        return "1 (reference)" if g.key.get("optimizer") == baseline_optimizer and not g.key.get("useful") else "-"
    d = paired_time_ratio(g, g.reference)
    if d["n"] == 0:
        return "no shared seeds"
    spread = f" ± {d['std']:.2f}" if d["std"] is not None else ""
    return f"{d['mean']:.2f}x{spread} ({d['n']} seed{'s' if d['n'] > 1 else ''})"


def _num(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def compare_markdown(groups: Sequence[Group], skipped: Sequence[tuple[str, str]] = (), *,
                     baseline_optimizer: str = "sgd") -> str:
    """The markdown table (and the list of skipped runs)."""
    base = baseline_optimizer.upper()
    lines = [f"| configuration | seeds | test error (%) mean | std | time (s) | time vs {base} | "
             f"train time vs {base} (paired) | error vs {base} (paired) | error vs random upsampling (paired) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for g in groups:
        rel = g.relative_time
        lines.append(f"| {g.label} | {len(g.runs)} | {_num(g.error_mean)} | {_num(g.error_std)} | "
                     f"{_num(g.seconds, 1)} | {_num(rel) + 'x' if math.isfinite(rel) else 'n/a'} | {_ratio_cell(g, baseline_optimizer)} | "
                     f"{_paired_cell(pair_groups(g, g.reference))} | {_paired_cell(pair_groups(g, g.matched))} |")
    lines += ["", "Paired: mean over shared seeds of (this group's test error - the other's), in points, with its "
              f"95% t-interval; groups differing only in the method ({', '.join(METHOD_FIELDS)}) are paired.",
              f"Train time vs {base}: per shared seed, each run summary's train_seconds (training epochs of the whole "
              f"run, USEFUL's pre-split phase included) over the {base} run of the same setting and seed; mean ± "
              "std over seeds."]
    if skipped:
        lines += ["", f"Skipped {len(skipped)} run(s):"]
        lines += [f"- {path}: {reason}" for path, reason in skipped]
    return "\n".join(lines)


def _paired_cell(d: dict | None) -> str:
    if d is None:
        return "-"
    n = d["n"]
    if n == 0:
        return "no shared seeds"
    if n < MIN_PAIRS:
        return f"{d['mean']:+.2f} ({n} pair{'s' if n > 1 else ''}: fewer than {MIN_PAIRS}, no interval)"
    return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({n} pairs)"


def plot_compare(groups: Sequence[Group], path: str | Path, *, baseline_optimizer: str = "sgd") -> None:
    """Bars of test error (std error bars), one panel per data set and model, the training time
    relative to the baseline written under each bar; written atomically in the format of ``path``'s
    suffix (PNG, PDF or SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from theory.plumbing.atomic import atomic_open

    panels: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        panels.setdefault((str(g.key.get("dataset")), str(g.key.get("model"))), []).append(g)
    n = max(len(panels), 1)
    widest = max((len(p) for p in panels.values()), default=1)
    fig, axes = plt.subplots(1, n, figsize=(max(3.0, 1.3 * widest + 1.0) * n, 4.2), squeeze=False)
    for ax, ((dataset, model), members) in zip(axes[0], panels.items()):
        xs = list(range(len(members)))
        means = [g.error_mean for g in members]
        stds = [g.error_std for g in members]
        colors = [f"C{_OPTIMIZER_ORDER.get(g.key.get('optimizer'), 3) * 2 + (1 if g.key.get('useful') else 0)}"
                  for g in members]
        ax.bar(xs, means, yerr=stds, capsize=4, color=colors, edgecolor="black", linewidth=0.6)
        finite = [m + s for m, s in zip(means, stds) if math.isfinite(m)]
        low = [m - s for m, s in zip(means, stds) if math.isfinite(m)]
        if finite:
            top, bottom = max(finite), min(low)
            span = max(top - bottom, 0.5)
            ax.set_ylim(max(0.0, bottom - 0.6 * span), top + 0.3 * span)
        labels = []
        for g in members:
            rel = g.relative_time
            time_text = f"{rel:.2f}x time" if math.isfinite(rel) else "time n/a"
            labels.append(f"{g.label}\n{time_text}")
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8, rotation=0 if len(members) <= 4 else 30,
                           ha="center" if len(members) <= 4 else "right")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"{dataset}, {model}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"test error (mean ± std over seeds); training time relative to {baseline_optimizer.upper()}",
                 fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=plot_format(path), dpi=120)
    plt.close(fig)
    with atomic_open(path, "wb") as fh:
        fh.write(buffer.getvalue())


PLOT_FORMATS = ("png", "pdf", "svg")


def plot_format(path: str | Path) -> str:
    """The figure's format from ``path``'s suffix (a ``plot.pdf`` gets PDF bytes, not PNG); a suffix
    that is not one of :data:`PLOT_FORMATS`, or a path that is a folder, is a ConfigError on ``--out``."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("--out", message=f"--out: {path} is a folder; give a file name such as fig4.png")
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ConfigError("--out", str(path), "a file name ending in " + ", ".join("." + f for f in PLOT_FORMATS))
    return suffix


def compare(run_dirs: Sequence[str | Path], *, out: str | Path | None = None,
            baseline_optimizer: str = "sgd") -> tuple[str, list[Group], list[tuple[str, str]]]:
    """Load, group, tabulate (and plot to ``out``); returns ``(markdown, groups, skipped)``.  Where the
    plot goes is checked before anything is read."""
    if out is not None:
        plot_format(out)
    runs, skipped = load_runs(run_dirs)
    groups = group_runs(runs, baseline_optimizer=baseline_optimizer)
    table = compare_markdown(groups, skipped, baseline_optimizer=baseline_optimizer)
    if out is not None:
        plot_compare(groups, out, baseline_optimizer=baseline_optimizer)
    return table, groups, skipped


# ----------------------------------------------------------------------------------------------
# CLI.


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
