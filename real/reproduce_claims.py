"""The claims of ``useful-train reproduce``, one function per claim: each reads the runs keyed ``(data, method,
seed)`` and returns :func:`theory.plumbing.claims.claim`'s format (rule, per-seed numbers, a note when it fails).

"Without the easy feature" is ``has_easy_train == False`` (easy_feature.npz).  The split's precision is the
fraction of the upsampled examples that lack the square; its recall the fraction of those lacking it upsampled.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from theory.plumbing.claims import claim, summarize
from theory.plumbing.cli import EnvironmentFailure

from .compare import paired_difference
from .reproduce_plan import LONG, ReproduceSettings, RunResult, data_label

REQUIRED_IDS = ("real_easy_first", "real_sam_more_uniform", "real_early_outputs_separate", "real_useful_helps",
                "real_useful_plain", "real_contrast_sweep", "real_split_inputs")
FULL_IDS = ("real_sam_rho_sweep", "real_long_budget")  # with --rho-grid and --long-epochs (--full)

__all__ = ["REQUIRED_IDS", "FULL_IDS", "judge", "fit_iteration", "early_gap", "split_quality", "class_precision",
           *("claim_" + cid[len("real_"):] for cid in REQUIRED_IDS + FULL_IDS)]

Results = Mapping[tuple[str, str, int], RunResult]

_MORE = " test accuracy exceeds SGD's and that of random upsampling of as many examples."
STATEMENTS = {  # each claim's statement; its figure is ID.png, the unmodified images' claims real_useful_helps.png
    "real_easy_first": "Under SGD the training examples with the easy feature are fit long before the rest.",
    "real_sam_more_uniform": ("Early in training SAM's gap between the training accuracy of the examples with and "
                              "without the easy feature is smaller than SGD's."),
    "real_early_outputs_separate": ("At the separating iteration, USEFUL's high-loss 2-means cluster of each class "
                                    "is the examples without the easy feature."),
    "real_useful_helps": ("SGD+USEFUL's test accuracy on the test examples without the easy feature exceeds SGD's "
                          "and that of random upsampling of as many examples."),
    "real_useful_plain": "On the unmodified images, SGD+USEFUL's" + _MORE,
    "real_contrast_sweep": ("As the clothing's contrast (the analog of beta_d) grows, SGD's test accuracy on the "
                            "examples without the easy feature rises and the early split separates them less well."),
    "real_split_inputs": ("On at least one of the clustering inputs (logits, softmax outputs, per-example loss), "
                          "USEFUL's high-loss 2-means cluster at the separating iteration is the examples without "
                          "the easy feature."),
    "real_sam_rho_sweep": ("For some radius rho in the sweep, SAM's early gap between the examples with and without "
                           "the easy feature is smaller than SGD's."),
    "real_long_budget": ("In the long-budget regime (training accuracy >= 99 %) on the unmodified images, "
                         "SGD+USEFUL's" + _MORE),
}
PAIRED_RULE = ("the 95% t-interval (at least 3 seeds whose differences vary) of the mean paired (by seed) difference "
               "of {} lies above 0 for SGD+USEFUL - SGD and for SGD+USEFUL - random upsampling")
MIN_SEEDS = 3  # an interval from 2 seeds (or with no spread at all) is no evidence of a gain


def _claim(cid: str, holds: bool, values: dict, rule: str, note: str | None) -> dict[str, Any]:
    figure = "real_useful_helps.png" if cid in ("real_useful_plain", "real_long_budget") else f"{cid}.png"
    return claim(cid, STATEMENTS[cid], holds, values, rule, figure, note)


# ----------------------------------------------------------------------------------------------
# The numbers behind the claims.


def fit_iteration(groups: dict, group: int, threshold: float, prefix: str = "") -> int | None:
    """The first window end at which ``group``'s running training accuracy reached ``threshold``, or None."""
    acc, end = groups[prefix + "accuracy"][:, group], groups[prefix + "end"]
    hit = np.flatnonzero(np.nan_to_num(acc, nan=-1.0) >= threshold)
    return int(end[hit[0]]) if hit.size else None


def early_gap(groups: dict, until: int, prefix: str = "") -> float:
    """Mean per iteration of (accuracy with the easy feature - without it) over the windows ending by ``until``."""
    acc, end, start = groups[prefix + "accuracy"], groups[prefix + "end"], groups[prefix + "start"]
    gap, length = acc[:, 1] - acc[:, 0], (end - start).astype(float)
    sel = (end <= until) & ~np.isnan(gap)
    return float((gap[sel] * length[sel]).sum() / length[sel].sum()) if sel.any() else float("nan")


def split_quality(upsample: np.ndarray, has_easy: np.ndarray) -> tuple[float, float]:
    """Precision and recall of "without the easy feature" among the upsampled examples."""
    up, without = np.asarray(upsample, bool), ~np.asarray(has_easy, bool)
    hits = float((up & without).sum())
    return hits / max(int(up.sum()), 1), hits / max(int(without.sum()), 1)


def class_precision(upsample: np.ndarray, has_easy: np.ndarray, labels: np.ndarray) -> list[float]:
    """The split's precision within each class (0 where a class upsampled nothing)."""
    up, has = np.asarray(upsample, bool), np.asarray(has_easy, bool)
    return [round(float((up & ~has & (labels == c)).sum() / max(int((up & (labels == c)).sum()), 1)), 3)
            for c in range(int(labels.max()) + 1)]


def _seeds(results: Results, data: str, method: str) -> list[RunResult]:
    """The runs of ``(data, method)``, seed 0, 1, ..."""
    n = 1 + max(seed for d, m, seed in results if (d, m) == (data, method))
    return [results[(data, method, i)] for i in range(n)]


def _main(s: ReproduceSettings, results: Results, method: str) -> list[RunResult]:
    return _seeds(results, data_label(s.contrast), method)


def _fits(s: ReproduceSettings, runs: list[RunResult], group: int) -> list[int | None]:
    return [fit_iteration(r.groups, group, s.fit_threshold) for r in runs]


def _gaps(s: ReproduceSettings, runs: list[RunResult]) -> list[float]:
    return [early_gap(r.groups, s.early_iterations) for r in runs]


def _final(runs: list[RunResult], key: str) -> list[float]:
    return [r.final[key] for r in runs]


def _quality(runs: list[RunResult]) -> tuple[list[float], list[float], list[int]]:
    q = [split_quality(r.partition["upsample"], r.easy["has_easy_train"]) for r in runs]
    return [p for p, _ in q], [r for _, r in q], [int(r.partition["upsample"].sum()) for r in runs]


def _sweep(rows: list[dict[str, list]]) -> dict[str, list]:
    """Per-seed numbers of each point of a sweep, summarized: ``{name: [summary per point]}``."""
    return {name: [summarize(row[name]) for row in rows] for name in rows[0]}


def _fmt_list(values) -> str:
    return ", ".join("never" if v is None else f"{v:g}" for v in values)


def _above_zero(d: dict) -> bool:
    """The paired difference's 95 % interval lies above 0, from at least MIN_SEEDS seeds that vary."""
    return d["n"] >= MIN_SEEDS and d["std"] > 0 and d["low"] is not None and d["low"] > 0


def _pts(d: dict) -> str:
    """A paired difference in points: mean [95 % interval]."""
    if d["mean"] is None:
        return "n/a"
    lo, hi = (f"{100 * d['low']:+.2f}", f"{100 * d['high']:+.2f}") if d["low"] is not None else ("n/a", "n/a")
    return f"{100 * d['mean']:+.2f} points [{lo}, {hi}]"


def _comparison(results: Results, data: str, key: str, methods=("sgd", "useful", "random")) -> tuple[dict, dict]:
    """Each method's runs on ``data``; their final ``key`` and training accuracy per seed, and the paired
    differences USEFUL - SGD, USEFUL - random and random - SGD."""
    runs = {m: _seeds(results, data, m) for m in methods}
    acc = {m: _final(r, key) for m, r in runs.items()}
    pairs = (("useful", "sgd"), ("useful", "random"), ("random", "sgd"))
    return runs, {key: {m: summarize(v) for m, v in acc.items()},
                  "train_acc_final": {m: summarize(_final(runs[m], "train_acc")) for m in ("sgd", "useful", "random")},
                  **{f"{a}_minus_{b}": paired_difference(acc[a], acc[b]) for a, b in pairs}}


def _useful_wins(v: dict) -> bool:
    return _above_zero(v["useful_minus_sgd"]) and _above_zero(v["useful_minus_random"])


def _paired_note(v: dict) -> str:
    vs_sgd, vs_rand, rand_sgd = v["useful_minus_sgd"], v["useful_minus_random"], v["random_minus_sgd"]
    text = (f"USEFUL - SGD {_pts(vs_sgd)}, USEFUL - random {_pts(vs_rand)}, random - SGD {_pts(rand_sgd)} "
            f"(mean paired difference [95% interval], {vs_sgd['n']} seeds): an interval that reaches 0 is not "
            "told apart from seed noise")
    if vs_sgd["n"] < MIN_SEEDS:
        text += f"; with fewer than {MIN_SEEDS} seeds no interval counts as evidence (the rule)"
    elif any(d["n"] >= 2 and d["std"] == 0 for d in (vs_sgd, vs_rand)):
        text += "; a difference equal in every seed has an interval of zero width, which the rule does not count"
    if _above_zero(vs_sgd) and not _above_zero(vs_rand) and _above_zero(rand_sgd):
        text += ("; random upsampling of as many examples gains as much over SGD: at this budget the gain comes "
                 "from the extra steps, not from the split")
    elif all(d["mean"] is not None and d["mean"] > 0 for d in (vs_sgd, vs_rand)) and vs_sgd["n"] < 5:
        text += f"; both means are positive (per seed: {_fmt_list(round(100 * x, 2) for x in vs_rand['per_seed'])} " \
                "points over random upsampling): more seeds (--seeds) narrow the intervals"
    return text


# ----------------------------------------------------------------------------------------------
# The claims of the main comparison (at --contrast).


def claim_easy_first(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    sgd = _main(s, results, "sgd")
    t_easy, t_rest = _fits(s, sgd, 1), _fits(s, sgd, 0)
    ratio = [None if e is None else (r if r is not None else math.inf) / e for e, r in zip(t_easy, t_rest)]
    bad = [i for i, r in enumerate(ratio) if r is None or r < s.easy_first_ratio]
    # both groups' running accuracy in the window that contains the split (or the last one)
    at_split = [r.groups["accuracy"][min(np.searchsorted(r.groups["end"], s.separate_iteration),
                                         len(r.groups["end"]) - 1)].astype(float) for r in sgd]
    ok = not bad
    return _claim(
        "real_easy_first", ok,
        {"contrast": s.contrast, "threshold": s.fit_threshold, "T_with_easy": summarize(t_easy),
         "T_without_easy": summarize(t_rest), "T_without_over_T_with": summarize(ratio),
         "without_never_fit_seeds": int(sum(r is None for r in t_rest)), "iterations": int(sgd[0].groups["end"][-1]),
         "acc_with_easy_at_split": summarize([a[1] for a in at_split]),
         "acc_without_easy_at_split": summarize([a[0] for a in at_split])},
        f"in every seed SGD's running training accuracy (windows of {s.group_window} iterations) of the examples "
        f"with the easy feature reaches {s.fit_threshold:g} at T_with, and that of the others reaches it at "
        f"T_without >= {s.easy_first_ratio:g} T_with or not within the run",
        None if ok else f"the examples without the feature reach the threshold less than {s.easy_first_ratio:g} "
                        f"times later in seed(s) {bad}: the clothing is learned nearly as fast as the square at this "
                        "contrast")


def claim_sam_more_uniform(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    gap_sgd, gap_sam, gap_use = (_gaps(s, _main(s, results, m)) for m in ("sgd", "sam", "useful"))
    ok = all(a < b for a, b in zip(gap_sam, gap_sgd))
    t_sgd, t_sam = _fits(s, _main(s, results, "sgd"), 1), _fits(s, _main(s, results, "sam"), 1)
    worse = [i for i, (a, b) in enumerate(zip(gap_sam, gap_sgd)) if a >= b]
    return _claim(
        "real_sam_more_uniform", ok,
        {"early_iterations": s.early_iterations, "gap_sgd": summarize(gap_sgd), "gap_sam": summarize(gap_sam),
         "gap_sgd_useful": summarize(gap_use), "sam_minus_sgd": paired_difference(gap_sam, gap_sgd),
         "T_with_easy_sgd": summarize(t_sgd), "T_with_easy_sam": summarize(t_sam), "rho": s.rho},
        f"in every seed the mean over the first {s.early_iterations} iterations of (running training accuracy with "
        "the easy feature - without it) is smaller for SAM than for SGD (same data and initialization); "
        "SGD+USEFUL's main phase reported alongside",
        None if ok else (f"SAM's early gap is not smaller in seed(s) {worse} (mean {np.mean(gap_sam):.3f} vs SGD's "
                         f"{np.mean(gap_sgd):.3f}); SAM fits the square at iteration {_fmt_list(t_sam)} against "
                         f"SGD's {_fmt_list(t_sgd)}: at rho = {s.rho:g} SAM does not delay the easy feature on this "
                         "network"))


def _separate_note(s: ReproduceSettings, prec, rec, prec_rand, per_class) -> str:
    if min(rec) < s.split_threshold:
        return (f"recall {min(rec):.2f} < {s.split_threshold:g}: some examples without the square are in the "
                f"low-loss cluster (fit already by their clothing); precision {min(prec):.2f}-{max(prec):.2f}")
    return (f"recall {min(rec):.2f}-{max(rec):.2f} but precision {min(prec):.2f}-{max(prec):.2f} (chance: "
            f"{1 - s.easy_fraction:.2f}, random upsampling {np.mean(prec_rand):.2f}): the per-class precision has "
            f"median {_fmt_list(round(float(np.median(pc)), 2) for pc in per_class)} (per seed), but in "
            f"{_fmt_list(int(sum(p < 0.5 for p in pc)) for pc in per_class)} of "
            f"{len(per_class[0])} classes it is below 0.5: there 2-means on the {s.split_on} puts a tail of "
            "examples with the square (at a higher loss than the rest of them) in the cluster of those without it")


def claim_early_outputs_separate(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    useful = _main(s, results, "useful")
    prec, rec, n_up = _quality(useful)
    prec_rand, rec_rand, _ = _quality(_main(s, results, "random"))
    ok = min(prec) >= s.split_threshold and min(rec) >= s.split_threshold
    per_class = [class_precision(r.partition["upsample"], r.easy["has_easy_train"], r.labels) for r in useful]
    return _claim(
        "real_early_outputs_separate", ok,
        {"separate_iteration": s.separate_iteration, "split_on": s.split_on, "precision": summarize(prec),
         "recall": summarize(rec), "upsampled": summarize(n_up),
         "without_easy_examples": int((~useful[0].easy["has_easy_train"].astype(bool)).sum()),
         "chance_precision": 1 - s.easy_fraction, "precision_random_upsampling": summarize(prec_rand),
         "recall_random_upsampling": summarize(rec_rand), "precision_per_class": per_class,
         "median_class_precision": summarize([float(np.median(pc)) for pc in per_class]),
         "classes_below_half": summarize([int(sum(p < 0.5 for p in pc)) for pc in per_class])},
        f"in every seed the upsampled examples at iteration {s.separate_iteration} have precision and recall >= "
        f"{s.split_threshold:g} against has_easy == False (the synthetic model's rule, SPEC early_outputs_separate)",
        None if ok else _separate_note(s, prec, rec, prec_rand, per_class))


def claim_useful_helps(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    methods = ("sgd", "useful", "random", "sam")
    runs, v = _comparison(results, data_label(s.contrast), "test_acc_without_easy", methods)
    v.update({k: {m: summarize(_final(runs[m], k)) for m in methods} for k in ("test_acc_with_easy", "test_acc")})
    v.update(sam_minus_sgd=paired_difference(*(_final(runs[m], "test_acc_without_easy") for m in ("sam", "sgd"))),
             epochs=s.epochs, contrast=s.contrast)
    ok = _useful_wins(v)
    return _claim(
        "real_useful_helps", ok, v,
        PAIRED_RULE.format("final test accuracy on the test examples without the easy feature")
        + " (the compute-matched baseline: as many examples per class, as many steps)",
        None if ok else _paired_note(v))


def _plain_comparison(results: Results, data: str) -> dict[str, Any]:
    """SGD, SGD+USEFUL and random upsampling on unmodified images: accuracies and paired differences."""
    runs, v = _comparison(results, data, "test_acc")
    return {**v, "upsampled": summarize([int(r.partition["upsample"].sum()) for r in runs["useful"]])}


def claim_useful_plain(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    v = _plain_comparison(results, "plain")
    ok = _useful_wins(v)
    return _claim("real_useful_plain", ok, v, "as real_useful_helps, on the unmodified images (same subset, budget "
                  "and separating iteration) and the whole test set; reported as it comes out",
                  None if ok else _paired_note(v))


# ----------------------------------------------------------------------------------------------
# The sweeps.


def _contrast_row(s: ReproduceSettings, results: Results, c: float) -> dict[str, list]:
    """One contrast's per-seed numbers: SGD (at other contrasts SGD recording its split, k = 1)."""
    d = data_label(c)
    sgd = _seeds(results, d, "sgd" if c == s.contrast else "sgd_split")
    prec, rec, n_up = _quality(_seeds(results, d, "useful" if c == s.contrast else "sgd_split"))
    return {"test_acc_without_easy_sgd": _final(sgd, "test_acc_without_easy"), "test_acc_sgd": _final(sgd, "test_acc"),
            "split_precision": prec, "split_recall": rec, "upsampled": n_up, "T_with_easy": _fits(s, sgd, 1),
            "T_without_easy": _fits(s, sgd, 0), "gap_sgd": _gaps(s, sgd)}


def _monotone(means: list[float], tol: float, rising: bool) -> bool:
    sign = 1 if rising else -1
    steps = all(sign * (b - a) >= -tol for a, b in zip(means, means[1:]))
    return steps and sign * (means[-1] - means[0]) > 0


def claim_contrast_sweep(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    grid, tol = s.contrast_grid, s.sweep_tolerance
    sweep = {"contrast": list(grid), "separate_iteration": s.separate_iteration,
             **_sweep([_contrast_row(s, results, c) for c in grid])}
    acc = [v["mean"] for v in sweep["test_acc_without_easy_sgd"]]
    prec = [v["mean"] for v in sweep["split_precision"]]
    rises, falls = _monotone(acc, tol, True), _monotone(prec, tol, False)
    sweep.update(accuracy_rises=rises, precision_falls=falls)
    notes = [f"{what} does not {verb} with the contrast: " + ", ".join(f"{c:g}: {m:{fmt}}" for c, m in zip(grid, ms))
             for ok, what, verb, ms, fmt in ((rises, "SGD's accuracy without the square", "rise", acc, ".4f"),
                                              (falls, "the split's precision", "fall", prec, ".3f")) if not ok]
    return _claim(
        "real_contrast_sweep", rises and falls, sweep,
        f"over the contrasts {', '.join(f'{c:g}' for c in grid)}: SGD's mean test accuracy without the easy feature "
        f"never drops by more than {tol:g} from one contrast to the next and ends higher than it starts, and the "
        f"mean precision of the split at iteration {s.separate_iteration} never rises by more than {tol:g} and ends "
        "lower than it starts (the theory: T_d / T_e ~ alpha beta_e^3 / beta_d^3 shrinks as beta_d grows); the "
        "groups' fit iterations and early gaps reported alongside",
        "; ".join(notes) or None)


def _split_runs(s: ReproduceSettings, results: Results, name: str) -> list[RunResult]:
    """The runs that split on ``name``; refused if their partition file records another input, or none where
    ``name`` is not the logits (the default of a trainer whose --split-on does not act)."""
    runs = _main(s, results, "useful" if name == s.split_on else f"split_{name}")
    for r in runs:
        recorded, where = r.partition.get("split_on"), r.job.config.out if r.job is not None else "a run"
        if recorded is None and name != "logits":
            raise EnvironmentFailure(f"{where}: its partition file does not record split_on: this trainer's "
                                     f"--split-on {name} does not act; the split inputs cannot be judged")
        if recorded is not None and str(recorded) != name:
            raise EnvironmentFailure(f"{where}: its partition file split on {recorded}, its configuration says {name}")
    return runs


def claim_split_inputs(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in s.split_inputs:
        prec, rec, n_up = _quality(_split_runs(s, results, name))
        table[name] = {"precision": summarize(prec), "recall": summarize(rec), "upsampled": summarize(n_up),
                       "meets_rule": min(prec) >= s.split_threshold and min(rec) >= s.split_threshold}
    passing = [name for name in s.split_inputs if table[name]["meets_rule"]]
    best = max(s.split_inputs, key=lambda n: table[n]["precision"]["mean"])
    note = None if passing else (
        "no input meets the rule: " + "; ".join(f"{n}: precision {table[n]['precision']['mean']:.2f}, recall "
                                                f"{table[n]['recall']['mean']:.2f}" for n in s.split_inputs)
        + f" (means over seeds; chance precision {1 - s.easy_fraction:.2f}); the most precise is {best}")
    return _claim(
        "real_split_inputs", bool(passing),
        {"separate_iteration": s.separate_iteration, "contrast": s.contrast, "inputs": table, "passing": passing,
         "most_precise": best, "chance_precision": 1 - s.easy_fraction},
        f"per input, USEFUL's per-class 2-means on it at iteration {s.separate_iteration} (the same pre-split SGD "
        "phase of each seed) upsamples a set whose precision and recall against has_easy == False are >= "
        f"{s.split_threshold:g} in every seed (real_early_outputs_separate's rule); the claim holds if some input "
        "meets it", note)


def claim_sam_rho_sweep(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    sgd = _main(s, results, "sgd")
    gap_sgd, rows = _gaps(s, sgd), []
    for rho in s.rhos:
        runs = _main(s, results, "sam" if rho == s.rho else f"sam_rho{rho:g}")
        rows.append({"gap": _gaps(s, runs), "T_with_easy": _fits(s, runs, 1), "T_without_easy": _fits(s, runs, 0),
                     "test_acc_without_easy": _final(runs, "test_acc_without_easy"),
                     "test_acc": _final(runs, "test_acc")})
    uniform = [all(a < b for a, b in zip(row["gap"], gap_sgd)) for row in rows]
    onset = next((r for r, u in zip(s.rhos, uniform) if u), None)
    sweep = {"rho": list(s.rhos), "early_iterations": s.early_iterations, "gap_sgd": summarize(gap_sgd),
             "T_with_easy_sgd": summarize(_fits(s, sgd, 1)), **_sweep(rows),
             "gap_minus_sgd": [paired_difference(row["gap"], gap_sgd) for row in rows],
             "more_uniform": uniform, "onset_rho": onset}
    gaps = ", ".join(f"{r:g}: {g['mean']:.3f}" for r, g in zip(s.rhos, sweep["gap"]))
    return _claim(
        "real_sam_rho_sweep", onset is not None, sweep,
        f"SAM at rho r is more uniform when, in every seed, its mean gap over the first {s.early_iterations} "
        "iterations is smaller than SGD's (paired: same data and initialization); the claim holds if some r of "
        f"{_fmt_list(s.rhos)} is, and onset_rho is the smallest such r; the iteration at which SAM fits the square "
        "and its final accuracy reported per rho",
        None if onset is not None else f"SAM is not more uniform at any radius: mean early gap {gaps} against SGD's "
                                       f"{np.mean(gap_sgd):.3f}")


def claim_long_budget(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    v = _plain_comparison(results, LONG)
    train = {m: v["train_acc_final"][m]["per_seed"] for m in ("sgd", "useful", "random")}
    reached = all(x is not None and x >= s.long_train_acc for xs in train.values() for x in xs)
    helps = _useful_wins(v)
    v.update(regime_reached=reached, epochs=s.long_epochs, train_subset=s.long_train_subset,
             separate_epoch=s.long_separate_epoch, train_acc_required=s.long_train_acc)
    per_seed = {m: _fmt_list(round(x, 4) for x in xs) for m, xs in train.items()}
    notes = [] if reached else [
        f"the regime was not reached: final training accuracy SGD {per_seed['sgd']}, USEFUL {per_seed['useful']}, "
        f"random {per_seed['random']} (per seed), some below {s.long_train_acc:g}"]
    return _claim(
        "real_long_budget", reached and helps, v,
        f"every run of the arm ({s.long_train_subset} training images, {s.long_epochs} epochs, USEFUL's split after "
        f"epoch {s.long_separate_epoch}) ends with running training accuracy >= {s.long_train_acc:g} (the regime "
        "was reached), and " + PAIRED_RULE.format("test accuracy"),
        "; ".join(notes + ([] if helps else [_paired_note(v)])) or None)


def judge(s: ReproduceSettings, results: Results) -> dict[str, Any]:
    """The claims from the runs, keyed ``(data, method, seed)``: the required ones, the sweeps' when they ran."""
    extra = (("real_sam_rho_sweep",) if len(s.rhos) > 1 else ()) + (("real_long_budget",) if s.long_epochs else ())
    return {"claims": [CLAIMS[cid](s, results) for cid in REQUIRED_IDS + extra]}


CLAIMS = {cid: globals()["claim_" + cid[len("real_"):]] for cid in REQUIRED_IDS + FULL_IDS}
