"""``useful-train reproduce``: the paper's mechanism on real images, as a claims report.

The real-data twin of ``useful-sim reproduce`` (the same claims.json schema, SPEC section 3).  The
data are Fashion-MNIST with a planted fast-learnable feature (real/planted.py): in a fraction alpha
of the training and test images a white square at a label-determined position on the border, the
clothing at a reduced contrast (the slow feature's strength, the analog of beta_d).  Each seed is
one paired experiment: the same training subset, planted examples and initialization are trained,
at the main ``contrast``, with

* ``sgd``: SGD;
* ``sam``: SAM;
* ``useful``: SGD+USEFUL: SGD for ``separate_iteration`` iterations, per-class 2-means on the
  outputs, the higher-loss cluster upsampled by k, then SGD from the same initialization;
* ``random``: the compute-matched baseline: as many examples per class as USEFUL's cluster,
  upsampled at random (the same pre-split phase, the same number of steps as ``useful``);

at the other contrasts of ``contrast_grid`` with ``sgd_split`` (USEFUL with k = 1: its main phase is
SGD itself, bit for bit, and it records the split USEFUL would make), and with ``sgd`` / ``useful`` /
``random`` once more on the unmodified images (``plain``).  Every run is a real run directory
under ``OUT/runs/`` (``useful-train compare`` reads them), named by its data, method, seed and a
digest of its full configuration: a run is reused only for exactly its configuration.

The claims (each with its rule, its per-seed numbers, and a note when it does not hold):

* ``real_easy_first``: under SGD the examples with the easy feature are fit long before the rest;
* ``real_sam_more_uniform``: SAM's early gap between the two groups is smaller than SGD's;
* ``real_early_outputs_separate``: USEFUL's upsampled cluster at the separating iteration is the
  examples without the easy feature (precision and recall);
* ``real_useful_helps``: SGD+USEFUL's test accuracy on the test examples without the easy feature
  exceeds SGD's and random upsampling's, paired by seed (mean paired difference, 95 % t-interval);
* ``real_useful_plain``: the same comparison on the unmodified images (overall test accuracy);
* ``real_contrast_sweep``: the analog of ``beta_d_sweep``: as the clothing's contrast grows, SGD's
  accuracy without the easy feature rises and the early split's precision falls.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from theory.plumbing.atomic import atomic_write_json, atomic_write_text
from theory.plumbing.claims import claim, claims_lines, summarize
from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import (
    ConfigError,
    add_config_arguments,
    check,
    check_choice,
    check_int,
    check_number,
    config_digest,
    resolve_config,
    to_jsonable,
)

from .compare import paired_difference
from .config import TrainConfig, computed_config
from .distributed import DEVICES

__all__ = ["REQUIRED_IDS", "ReproduceSettings", "Job", "plan", "reproduce", "judge", "summarize", "fit_iteration",
           "early_gap", "merge_short_windows", "split_quality", "register_commands", "REPORT_FILES"]

log = logging.getLogger("real.reproduce")

REQUIRED_IDS = ("real_easy_first", "real_sam_more_uniform", "real_early_outputs_separate", "real_useful_helps",
                "real_useful_plain", "real_contrast_sweep")
METHODS = ("sgd", "sam", "useful", "random", "sgd_split")
CLAIMS, CLAIMS_MD, RUNS = "claims.json", "claims.md", "runs"
FIGURES = ("real_easy_first.png", "real_sam_more_uniform.png", "real_early_outputs_separate.png",
           "real_useful_helps.png", "real_contrast_sweep.png")
REPORT_FILES = (CLAIMS, CLAIMS_MD, *FIGURES)  # files of the report folder (--overwrite removes exactly these)
_DEBIAN_PACKAGE = "dataset-fashion-mnist"


# ----------------------------------------------------------------------------------------------
# Settings.


@dataclass(frozen=True)
class ReproduceSettings:
    """What ``reproduce`` runs (every field is a flag: ``--train-subset``, ``--contrast-grid``, ...).

    Defaults (chosen, see docs/reproduce.md): a stratified subset of 5000 Fashion-MNIST training
    images (the full test set), the small CNN, batch 128, SGD with momentum 0.9, lr 0.1, weight
    decay 5e-4, cosine schedule over ``epochs``; no augmentation (crops and flips would move the
    label-placed square); alpha = 0.9; a 4x4 square; the clothing at contrast 0.25; USEFUL splits
    after 60 iterations with k = 2.
    """

    seeds: int = 3
    train_subset: int = 5000
    test_subset: int | None = None
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1
    rho: float = 0.05
    easy_fraction: float = 0.9
    easy_size: int = 4
    contrast: float = 0.25
    contrast_grid: tuple[float, ...] = (0.25, 0.5, 1.0)
    separate_iteration: int = 60
    upsample_factor: int = 2
    group_window: int = 10
    early_iterations: int = 120
    fit_threshold: float = 0.9
    easy_first_ratio: float = 5.0
    split_threshold: float = 0.9
    sweep_tolerance: float = 0.005
    workers: int = 2
    device: str = "cpu"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        check_int("--seeds", self.seeds, low=1)
        check_int("--train-subset", self.train_subset, low=20)
        if self.test_subset is not None:
            check_int("--test-subset", self.test_subset, low=20)
        check_int("--epochs", self.epochs, low=1)
        check_int("--batch-size", self.batch_size, low=2)
        check_number("--lr", self.lr, low=0.0, low_open=True)
        check_number("--rho", self.rho, low=0.0, low_open=True)
        check_number("--easy-fraction", self.easy_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        check_int("--easy-size", self.easy_size, low=1, high=6)
        check_number("--contrast", self.contrast, low=0.0, high=1.0, low_open=True)
        check(isinstance(self.contrast_grid, tuple) and len(self.contrast_grid) >= 2, "--contrast-grid",
              self.contrast_grid, "at least two contrasts")
        for c in self.contrast_grid:
            check_number("--contrast-grid", c, low=0.0, high=1.0, low_open=True)
        check(list(self.contrast_grid) == sorted(set(self.contrast_grid)), "--contrast-grid", self.contrast_grid,
              "strictly increasing contrasts")
        check(self.contrast in self.contrast_grid, "--contrast", self.contrast, "one of --contrast-grid")
        steps = self.train_subset // self.batch_size
        check_int("--separate-iteration", self.separate_iteration, low=1, high=max(1, self.epochs * steps))
        check_int("--upsample-factor", self.upsample_factor, low=2)
        check_int("--group-window", self.group_window, low=1)
        check_int("--early-iterations", self.early_iterations, low=self.group_window)
        check_number("--fit-threshold", self.fit_threshold, low=0.0, high=1.0, low_open=True)
        check_number("--easy-first-ratio", self.easy_first_ratio, low=1.0)
        check_number("--split-threshold", self.split_threshold, low=0.0, high=1.0)
        check_number("--sweep-tolerance", self.sweep_tolerance, low=0.0)
        check_int("--workers", self.workers, low=1, high=64)
        check_choice("--device", self.device, DEVICES)
        if self.data_dir is not None:
            check(isinstance(self.data_dir, str) and Path(self.data_dir).expanduser().is_dir(), "--data-dir",
                  self.data_dir, "an existing directory")

    @classmethod
    def quick(cls, **overrides: Any) -> "ReproduceSettings":
        """``--quick``: :data:`QUICK_FIELDS` over the defaults (a few CPU minutes)."""
        return cls(**{**QUICK_FIELDS, **overrides})


# --quick: fewer seeds, a smaller subset, a shorter budget, two contrasts.
QUICK_FIELDS: dict[str, Any] = {"seeds": 2, "train_subset": 1000, "test_subset": 2000, "epochs": 4, "batch_size": 32,
                                "separate_iteration": 40, "contrast_grid": (0.25, 1.0)}


# ----------------------------------------------------------------------------------------------
# The plan: one job per run.


@dataclass(frozen=True)
class Job:
    """One training run of the report: ``data`` is ``c<contrast>`` (planted) or ``plain``."""

    method: str
    data: str
    contrast: float | None  # None for plain
    seed: int
    config: TrainConfig

    @property
    def name(self) -> str:
        return f"{self.data}-{self.method}-seed{self.seed}-{run_digest(self.config)[:10]}"

    @property
    def cost(self) -> float:  # relative work, for scheduling the longest first
        return {"sam": 2.0, "useful": 1.3, "random": 1.3, "sgd_split": 1.1}.get(self.method, 1.0)


def run_digest(cfg: TrainConfig) -> str:
    """The run's identity: the digest of what it computes (:func:`real.config.computed_config`)."""
    return config_digest(computed_config(cfg))


def data_label(contrast: float | None) -> str:
    return "plain" if contrast is None else f"c{contrast:g}"


def job_config(s: ReproduceSettings, method: str, contrast: float | None, seed: int, out: Path | None) -> TrainConfig:
    """The :class:`TrainConfig` of one run (``contrast`` None: the unmodified images)."""
    kw: dict[str, Any] = dict(
        dataset="fashion-mnist", data_dir=s.data_dir, model="cnn-small", epochs=s.epochs, batch_size=s.batch_size,
        lr=s.lr, momentum=0.9, weight_decay=5e-4, schedule="cosine", augment="none", train_subset=s.train_subset,
        test_subset=s.test_subset, seed=seed, deterministic=True, device=s.device, resume=True,
        memory_format="channels_last", eval_batch_size=256)
    if contrast is not None:
        kw.update(easy_feature="patch", easy_fraction=s.easy_fraction, easy_size=s.easy_size, contrast=contrast,
                  group_window=s.group_window)
    if method == "sam":
        kw.update(optimizer="sam", rho=s.rho)
    if method in ("useful", "random", "sgd_split"):  # sgd_split: k = 1, the main phase is SGD itself
        kw.update(useful=True, partition="random" if method == "random" else "useful",
                  separate_iteration=s.separate_iteration, upsample_factor=1 if method == "sgd_split" else
                  s.upsample_factor)
    cfg = TrainConfig(**kw)
    if out is not None:
        name = Job(method, data_label(contrast), contrast, seed, cfg).name
        cfg = dataclasses.replace(cfg, out=str(out / RUNS / name))
    return cfg


def plan(s: ReproduceSettings, out: Path) -> list[Job]:
    """Every run of the report, seed by seed."""
    jobs = []
    for seed in range(s.seeds):
        for contrast in (*s.contrast_grid, None):
            if contrast == s.contrast:
                methods = ("sgd", "sam", "useful", "random")
            else:  # the sweep's other contrasts: SGD, recording the split USEFUL would make
                methods = ("sgd_split",) if contrast is not None else ("sgd", "useful", "random")
            for method in methods:
                jobs.append(Job(method, data_label(contrast), contrast, seed, job_config(s, method, contrast, seed, out)))
    return jobs


# ----------------------------------------------------------------------------------------------
# Running the jobs.


def _train_job(cfg: TrainConfig) -> dict:
    """One run in a worker process (quiet: the parent reports progress)."""
    logging.getLogger("real").setLevel(logging.WARNING)
    from .train import train

    return train(cfg)


def run_jobs(jobs: Sequence[Job], *, workers: int, on_done: Callable[[Job, dict, float], None]) -> None:
    """Train every job (``workers`` processes, the longest jobs first); a run that does not complete
    is an :class:`EnvironmentFailure` naming it."""
    order = sorted(jobs, key=lambda j: -j.cost)

    def check_done(job: Job, summary: dict) -> None:
        if summary.get("status") != "completed":
            raise EnvironmentFailure(f"run {job.config.out} ended with status {summary.get('status')!r}: "
                                     f"{summary.get('message', '')}")

    if workers == 1:
        for job in order:
            start = time.perf_counter()
            summary = _train_job(job.config)
            check_done(job, summary)
            on_done(job, summary, time.perf_counter() - start)
        return
    import multiprocessing

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        started = {pool.submit(_train_job, job.config): (job, time.perf_counter()) for job in order}
        pending = set(started)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job, start = started[future]
                    summary = future.result()
                    check_done(job, summary)
                    on_done(job, summary, time.perf_counter() - start)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def check_data(data_dir: str | None) -> None:
    """Fashion-MNIST must be readable before anything starts: otherwise one line (exit 2) that names
    Debian's package (or the folder given)."""
    from .datasets import DatasetError, load_dataset

    try:
        load_dataset("fashion-mnist", data_dir)
    except DatasetError as err:
        if data_dir is None:
            raise ConfigError("--data-dir", message=f"--data-dir: Fashion-MNIST is not installed: install Debian's "
                              f"package {_DEBIAN_PACKAGE} (apt-get install {_DEBIAN_PACKAGE}) or pass --data-dir "
                              "with the four idx files") from None
        raise ConfigError("--data-dir", message=f"--data-dir: {err}") from None


def prepare_out(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a folder that holds a report unless ``--overwrite`` (remove the report's files and its
    run directories, nothing else) or ``--resume`` (keep the runs: each is reused only for its exact
    configuration, an unfinished one continues from its checkpoint)."""
    from .rundir import RUN_FILES, is_run_dir

    if out.exists() and not out.is_dir():
        raise ConfigError("--out", message=f"--out: {out} exists and is not a directory")
    runs = out / RUNS
    present = [name for name in REPORT_FILES if (out / name).exists()] + ([RUNS] if runs.exists() else [])
    if not present or resume:
        return
    if not overwrite:
        raise ConfigError("--out", message=f"--out: {out} holds a report ({', '.join(present)}); pass --overwrite "
                                           "to replace it or --resume to continue it")
    for name in REPORT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    if runs.is_dir():
        for run in sorted(runs.iterdir()):
            if run.is_dir() and is_run_dir(run):
                for name in (*RUN_FILES, "run.lock"):
                    with contextlib.suppress(FileNotFoundError):
                        (run / name).unlink()
                with contextlib.suppress(OSError):
                    run.rmdir()  # kept if the user put something else in it
        with contextlib.suppress(OSError):
            runs.rmdir()


# ----------------------------------------------------------------------------------------------
# Reading the runs back.


@dataclass
class RunResult:
    job: Job
    summary: dict
    metrics: list[dict]
    groups: dict | None
    easy: dict | None
    partition: dict | None

    @property
    def final(self) -> dict:
        return [m for m in self.metrics if m["phase"] == "main"][-1]


def load_result(job: Job) -> RunResult:
    from .rundir import (
        read_easy_feature,
        read_group_accuracy,
        read_metrics,
        read_partition,
        read_summary,
    )

    path = Path(job.config.out)
    planted = job.config.easy_feature != "none"
    groups = None
    if planted:
        groups = merge_short_windows(read_group_accuracy(path))
        if job.config.useful:
            groups = merge_short_windows(groups, "separate_")
    return RunResult(job=job, summary=read_summary(path), metrics=read_metrics(path), groups=groups,
                     easy=read_easy_feature(path) if planted else None,
                     partition=read_partition(path) if job.config.useful else None)


# ----------------------------------------------------------------------------------------------
# The numbers behind the claims.


def merge_short_windows(groups: dict, prefix: str = "") -> dict:
    """group_accuracy.npz's windows with each window shorter than half the window length (the end of
    an epoch) merged into the window before it, accuracies recomputed from the counts."""
    start, end = groups[prefix + "start"], groups[prefix + "end"]
    seen, correct = groups[prefix + "seen"], groups[prefix + "correct"]
    keep: list[int] = []
    rows: list[list] = []
    for i in range(len(end)):
        if rows and end[i] - start[i] < int(groups[prefix + "window"]) / 2:
            rows[-1][1] = end[i]
            rows[-1][2] = rows[-1][2] + seen[i]
            rows[-1][3] = rows[-1][3] + correct[i]
        else:
            rows.append([start[i], end[i], seen[i].copy(), correct[i].copy()])
            keep.append(i)
    out = dict(groups)
    if rows:
        out[prefix + "start"] = np.array([r[0] for r in rows])
        out[prefix + "end"] = np.array([r[1] for r in rows])
        out[prefix + "seen"] = np.stack([r[2] for r in rows])
        out[prefix + "correct"] = np.stack([r[3] for r in rows])
        out[prefix + "epoch"] = groups[prefix + "epoch"][keep]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[prefix + "accuracy"] = np.where(out[prefix + "seen"] > 0, out[prefix + "correct"]
                                                / np.maximum(out[prefix + "seen"], 1), np.nan)
    return out


def fit_iteration(groups: dict, group: int, threshold: float, prefix: str = "") -> int | None:
    """The first iteration (a window's end) at which ``group``'s running training accuracy reached
    ``threshold``, or None if it never did."""
    acc, end = groups[prefix + "accuracy"][:, group], groups[prefix + "end"]
    hit = np.flatnonzero(np.nan_to_num(acc, nan=-1.0) >= threshold)
    return int(end[hit[0]]) if hit.size else None


def early_gap(groups: dict, until: int, prefix: str = "") -> float:
    """Mean per iteration, over the windows ending at or before ``until``, of (accuracy with the easy
    feature - accuracy without it): the area between the two groups' curves divided by its length."""
    acc, end, start = groups[prefix + "accuracy"], groups[prefix + "end"], groups[prefix + "start"]
    gap, length = acc[:, 1] - acc[:, 0], (end - start).astype(float)
    sel = (end <= until) & ~np.isnan(gap)
    return float((gap[sel] * length[sel]).sum() / length[sel].sum()) if sel.any() else float("nan")


def split_quality(upsample: np.ndarray, has_easy: np.ndarray) -> tuple[float, float]:
    """Precision and recall of "without the easy feature" among the upsampled examples."""
    up, without = np.asarray(upsample, bool), ~np.asarray(has_easy, bool)
    hits = float((up & without).sum())
    return hits / max(int(up.sum()), 1), hits / max(int(without.sum()), 1)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.2f}"


def judge(s: ReproduceSettings, results: dict[tuple[str, str, int], RunResult]) -> dict[str, Any]:
    """The claims from the runs, keyed ``(data, method, seed)``."""
    S, main = s.seeds, data_label(s.contrast)
    seeds = range(S)

    def R(method: str, seed: int, data: str = main) -> RunResult:
        return results[(data, method, seed)]

    claims = []
    # real_easy_first ----------------------------------------------------------------------------
    t_easy = [fit_iteration(R("sgd", i).groups, 1, s.fit_threshold) for i in seeds]
    t_rest = [fit_iteration(R("sgd", i).groups, 0, s.fit_threshold) for i in seeds]
    last = [int(R("sgd", i).groups["end"][-1]) for i in seeds]
    ratio = [None if e is None else (r if r is not None else math.inf) / e for e, r in zip(t_easy, t_rest)]
    ok = all(e is not None and (r is None or r / e >= s.easy_first_ratio) for e, r in zip(t_easy, t_rest))
    at_split = [_window_acc(R("sgd", i).groups, s.separate_iteration) for i in seeds]
    claims.append(claim(
        "real_easy_first",
        "Under SGD the training examples with the easy feature are fit long before the rest.",
        ok,
        {"contrast": s.contrast, "threshold": s.fit_threshold, "T_with_easy": summarize(t_easy),
         "T_without_easy": summarize(t_rest), "T_without_over_T_with": summarize(ratio),
         "without_never_fit_seeds": int(sum(r is None for r in t_rest)), "iterations": last[0],
         "acc_with_easy_at_split": summarize([a[1] for a in at_split]),
         "acc_without_easy_at_split": summarize([a[0] for a in at_split])},
        f"in every seed SGD's running training accuracy (windows of {s.group_window} iterations) of the examples "
        f"with the easy feature reaches {s.fit_threshold:g} at T_with, and that of the others reaches it at "
        f"T_without >= {s.easy_first_ratio:g} T_with or not within the run",
        "real_easy_first.png",
        None if ok else "the examples without the feature reach the threshold less than "
                        f"{s.easy_first_ratio:g} times later in seed(s) "
                        f"{[i for i, r in enumerate(ratio) if r is None or r < s.easy_first_ratio]}: "
                        "the clothing is learned nearly as fast as the square at this contrast",
    ))

    # real_sam_more_uniform ----------------------------------------------------------------------
    gap_sgd = [early_gap(R("sgd", i).groups, s.early_iterations) for i in seeds]
    gap_sam = [early_gap(R("sam", i).groups, s.early_iterations) for i in seeds]
    gap_use = [early_gap(R("useful", i).groups, s.early_iterations) for i in seeds]
    ok = all(a < b for a, b in zip(gap_sam, gap_sgd))
    t_easy_sam = [fit_iteration(R("sam", i).groups, 1, s.fit_threshold) for i in seeds]
    claims.append(claim(
        "real_sam_more_uniform",
        "Early in training SAM's gap between the training accuracy of the examples with and without the easy "
        "feature is smaller than SGD's.",
        ok,
        {"early_iterations": s.early_iterations, "gap_sgd": summarize(gap_sgd), "gap_sam": summarize(gap_sam),
         "gap_sgd_useful": summarize(gap_use), "sam_minus_sgd": paired_difference(gap_sam, gap_sgd),
         "T_with_easy_sgd": summarize(t_easy), "T_with_easy_sam": summarize(t_easy_sam), "rho": s.rho},
        f"in every seed the mean over the first {s.early_iterations} iterations of (running training accuracy with "
        "the easy feature - without it) is smaller for SAM than for SGD (same data and initialization); "
        "SGD+USEFUL's main phase reported alongside",
        "real_sam_more_uniform.png",
        None if ok else (f"SAM's early gap is not smaller in seed(s) {[i for i in seeds if gap_sam[i] >= gap_sgd[i]]} "
                         f"(mean {np.mean(gap_sam):.3f} vs SGD's {np.mean(gap_sgd):.3f}); SAM fits the square at "
                         f"iteration {_fmt_list(t_easy_sam)} against SGD's {_fmt_list(t_easy)}: at rho = {s.rho:g} "
                         "SAM does not delay the easy feature on this network"),
    ))

    # real_early_outputs_separate ----------------------------------------------------------------
    def quality(method: str, data: str) -> tuple[list[float], list[float], list[int]]:
        q = [split_quality(R(method, i, data).partition["upsample"], R(method, i, data).easy["has_easy_train"])
             for i in seeds]
        return [p for p, _ in q], [r for _, r in q], [int(R(method, i, data).partition["upsample"].sum())
                                                      for i in seeds]
    prec, rec, n_up = quality("useful", main)
    prec_rand, rec_rand, _ = quality("random", main)
    ok = min(prec) >= s.split_threshold and min(rec) >= s.split_threshold
    per_class = [_per_class_precision(R("useful", i)) for i in seeds]
    median = [float(np.median(pc)) for pc in per_class]
    mixed = [int(sum(p < 0.5 for p in pc)) for pc in per_class]
    note = None
    if not ok:
        note = (f"recall {min(rec):.2f}-{max(rec):.2f} but precision {min(prec):.2f}-{max(prec):.2f} (chance: "
                f"{1 - s.easy_fraction:.2f}, random upsampling {np.mean(prec_rand):.2f}): the per-class precision has "
                f"median {_fmt_list(round(m, 2) for m in median)} (per seed), but in {_fmt_list(mixed)} of "
                f"{len(per_class[0])} classes it is below 0.5: there 2-means on the logits puts a tail of examples "
                "with the square (at a higher loss than the rest of them) in the cluster of those without it")
        if min(rec) < s.split_threshold:
            note = (f"recall {min(rec):.2f} < {s.split_threshold:g}: some examples without the square are in the "
                    f"low-loss cluster (fit already by their clothing); precision {min(prec):.2f}-{max(prec):.2f}")
    claims.append(claim(
        "real_early_outputs_separate",
        "At the separating iteration, USEFUL's high-loss 2-means cluster of each class is the examples without the "
        "easy feature.",
        ok,
        {"separate_iteration": s.separate_iteration, "precision": summarize(prec), "recall": summarize(rec),
         "upsampled": summarize(n_up), "without_easy_examples": int((~R("useful", 0).easy["has_easy_train"]).sum()),
         "chance_precision": 1 - s.easy_fraction, "precision_random_upsampling": summarize(prec_rand),
         "recall_random_upsampling": summarize(rec_rand), "precision_per_class": per_class,
         "median_class_precision": summarize(median), "classes_below_half": summarize(mixed)},
        f"in every seed the upsampled examples at iteration {s.separate_iteration} have precision and recall >= "
        f"{s.split_threshold:g} against has_easy == False (the synthetic model's rule, SPEC early_outputs_separate)",
        "real_early_outputs_separate.png",
        note,
    ))

    # real_useful_helps --------------------------------------------------------------------------
    key = "test_acc_without_easy"
    acc = {m: [R(m, i).final[key] for i in seeds] for m in ("sgd", "useful", "random", "sam")}
    vs_sgd = paired_difference(acc["useful"], acc["sgd"])
    vs_rand = paired_difference(acc["useful"], acc["random"])
    ok = _above_zero(vs_sgd) and _above_zero(vs_rand)
    claims.append(claim(
        "real_useful_helps",
        "SGD+USEFUL's test accuracy on the test examples without the easy feature exceeds SGD's and that of random "
        "upsampling of as many examples.",
        ok,
        {"test_acc_without_easy": {m: summarize(v) for m, v in acc.items()},
         "test_acc_with_easy": {m: summarize([R(m, i).final["test_acc_with_easy"] for i in seeds])
                                for m in ("sgd", "useful", "random", "sam")},
         "test_acc": {m: summarize([R(m, i).final["test_acc"] for i in seeds]) for m in ("sgd", "useful", "random",
                                                                                         "sam")},
         "useful_minus_sgd": vs_sgd, "useful_minus_random": vs_rand,
         "random_minus_sgd": paired_difference(acc["random"], acc["sgd"]),
         "sam_minus_sgd": paired_difference(acc["sam"], acc["sgd"]),
         "train_acc_final": {m: summarize([R(m, i).final["train_acc"] for i in seeds]) for m in ("sgd", "useful",
                                                                                                 "random")},
         "epochs": s.epochs, "contrast": s.contrast},
        "the 95% t-interval of the mean paired (by seed) difference of final test accuracy on the test examples "
        "without the easy feature lies above 0 for SGD+USEFUL - SGD and for SGD+USEFUL - random upsampling (the "
        "compute-matched baseline: as many examples per class, as many steps)",
        "real_useful_helps.png",
        None if ok else _paired_note(vs_sgd, vs_rand, paired_difference(acc["random"], acc["sgd"])),
    ))

    # real_useful_plain --------------------------------------------------------------------------
    plain = {m: [R(m, i, "plain").final["test_acc"] for i in seeds] for m in ("sgd", "useful", "random")}
    p_sgd, p_rand = paired_difference(plain["useful"], plain["sgd"]), paired_difference(plain["useful"], plain["random"])
    ok = _above_zero(p_sgd) and _above_zero(p_rand)
    claims.append(claim(
        "real_useful_plain",
        "On the unmodified images, SGD+USEFUL's test accuracy exceeds SGD's and that of random upsampling of as many "
        "examples.",
        ok,
        {"test_acc": {m: summarize(v) for m, v in plain.items()}, "useful_minus_sgd": p_sgd,
         "useful_minus_random": p_rand, "random_minus_sgd": paired_difference(plain["random"], plain["sgd"]),
         "upsampled": summarize([int(R("useful", i, "plain").partition["upsample"].sum()) for i in seeds])},
        "as real_useful_helps, on the unmodified images (same subset, budget and separating iteration) and the "
        "whole test set; reported as it comes out",
        "real_useful_helps.png",
        None if ok else _paired_note(p_sgd, p_rand, paired_difference(plain["random"], plain["sgd"])),
    ))

    # real_contrast_sweep ------------------------------------------------------------------------
    grid, tol = s.contrast_grid, s.sweep_tolerance
    sweep: dict[str, Any] = {"contrast": list(grid), "separate_iteration": s.separate_iteration}
    for c in grid:
        d = data_label(c)
        sgd = "sgd" if c == s.contrast else "sgd_split"  # SGD; at other contrasts with the split recorded (k = 1)
        pr, rc, up = quality("useful" if c == s.contrast else "sgd_split", d)
        e = [fit_iteration(R(sgd, i, d).groups, 1, s.fit_threshold) for i in seeds]
        r = [fit_iteration(R(sgd, i, d).groups, 0, s.fit_threshold) for i in seeds]
        for name, values in (("test_acc_without_easy_sgd", [R(sgd, i, d).final[key] for i in seeds]),
                             ("test_acc_sgd", [R(sgd, i, d).final["test_acc"] for i in seeds]),
                             ("split_precision", pr), ("split_recall", rc), ("upsampled", up),
                             ("T_with_easy", e), ("T_without_easy", r),
                             ("gap_sgd", [early_gap(R(sgd, i, d).groups, s.early_iterations) for i in seeds])):
            sweep.setdefault(name, []).append(summarize(values))
    acc_means = [v["mean"] for v in sweep["test_acc_without_easy_sgd"]]
    prec_means = [v["mean"] for v in sweep["split_precision"]]
    rises = all(b >= a - tol for a, b in zip(acc_means, acc_means[1:])) and acc_means[-1] > acc_means[0]
    falls = all(b <= a + tol for a, b in zip(prec_means, prec_means[1:])) and prec_means[-1] < prec_means[0]
    sweep.update(accuracy_rises=rises, precision_falls=falls)
    notes = []
    if not rises:
        notes.append("SGD's accuracy without the square does not rise with the contrast: "
                     + ", ".join(f"{c:g}: {m:.4f}" for c, m in zip(grid, acc_means)))
    if not falls:
        notes.append("the split's precision does not fall with the contrast: "
                     + ", ".join(f"{c:g}: {m:.3f}" for c, m in zip(grid, prec_means)))
    claims.append(claim(
        "real_contrast_sweep",
        "As the clothing's contrast (the analog of beta_d) grows, SGD's test accuracy on the examples without the "
        "easy feature rises and the early split separates them less well.",
        rises and falls,
        sweep,
        f"over the contrasts {', '.join(f'{c:g}' for c in grid)}: SGD's mean test accuracy without the easy feature "
        f"never drops by more than {tol:g} from one contrast to the next and ends higher than it starts, and the "
        f"mean precision of the split at iteration {s.separate_iteration} never rises by more than {tol:g} and ends "
        "lower than it starts (the theory: T_d / T_e ~ alpha beta_e^3 / beta_d^3 shrinks as beta_d grows); the "
        "groups' fit iterations and early gaps reported alongside",
        "real_contrast_sweep.png",
        "; ".join(notes) or None,
    ))
    return {"claims": claims}


def _fmt_list(values) -> str:
    return ", ".join("never" if v is None else f"{v:g}" for v in values)


def _window_acc(groups: dict, iteration: int) -> tuple[float, float]:
    """Both groups' running accuracy in the window that contains ``iteration`` (or the last one)."""
    end = groups["end"]
    i = int(min(np.searchsorted(end, iteration), len(end) - 1))
    return float(groups["accuracy"][i, 0]), float(groups["accuracy"][i, 1])


def _per_class_precision(result: RunResult) -> list[float]:
    up, has = result.partition["upsample"].astype(bool), result.easy["has_easy_train"].astype(bool)
    labels = _labels_of(result)
    out = []
    for c in range(int(labels.max()) + 1):
        sel = up & (labels == c)
        out.append(round(float((sel & ~has).sum() / max(int(sel.sum()), 1)), 3))
    return out


def _labels_of(result: RunResult) -> np.ndarray:
    """The training labels of a run's subset, from the data set (the runs do not store labels)."""
    from .datasets import load_dataset
    from .planted import stratified_subset

    cfg = result.job.config
    y = load_dataset(cfg.dataset, cfg.data_dir).train_y.numpy()
    return y[stratified_subset(y, cfg.train_subset, cfg.seed)] if cfg.train_subset else y


def _above_zero(d: dict) -> bool:
    return d["low"] is not None and d["low"] > 0


def _paired_note(vs_sgd: dict, vs_rand: dict, rand_sgd: dict) -> str:
    def txt(d):
        lo, hi = (f"{100 * d['low']:+.2f}", f"{100 * d['high']:+.2f}") if d["low"] is not None else ("n/a", "n/a")
        return f"{_pct(d['mean'])} points [{lo}, {hi}]"

    text = (f"USEFUL - SGD {txt(vs_sgd)}, USEFUL - random {txt(vs_rand)}, random - SGD {txt(rand_sgd)} "
            f"(mean paired difference [95% interval], {vs_sgd['n']} seeds): an interval that reaches 0 is not "
            "told apart from seed noise")
    if _above_zero(vs_sgd) and not _above_zero(vs_rand) and _above_zero(rand_sgd):
        text += ("; random upsampling of as many examples gains as much over SGD: at this budget the gain comes "
                 "from the extra steps, not from the split")
    elif all(d["mean"] is not None and d["mean"] > 0 for d in (vs_sgd, vs_rand)) and vs_sgd["n"] < 5:
        text += f"; both means are positive (per seed: {_fmt_list(round(100 * x, 2) for x in vs_rand['per_seed'])} " \
                "points over random upsampling): more seeds (--seeds) narrow the intervals"
    return text


# ----------------------------------------------------------------------------------------------
# The report.


def reproduce(settings: ReproduceSettings, out_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
              on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every run (reusing those of the same configuration already in ``OUT/runs``), judge
    the claims, write claims.json, claims.md and the figures; return the report."""
    from . import reproduce_figures as figures

    t_start = time.perf_counter()
    stage = on_stage or (lambda text: log.info("%s", text))
    out = Path(out_dir)
    check_data(settings.data_dir)
    prepare_out(out, overwrite=overwrite, resume=resume)
    jobs = plan(settings, out)
    (out / RUNS).mkdir(parents=True, exist_ok=True)
    count = [0]

    def done(job: Job, summary: dict, seconds: float) -> None:
        count[0] += 1
        stage(f"[{count[0]}/{len(jobs)}] {job.name}: test acc {summary['final_test_acc']:.4f} "
              f"({summary['wall_seconds']:.0f} s)")

    stage(f"{len(jobs)} runs ({settings.seeds} seeds) on {settings.workers} worker(s) in {out / RUNS}")
    run_jobs(jobs, workers=settings.workers, on_done=done)
    results = {(j.data, j.method, j.seed): load_result(j) for j in jobs}
    stage("claims")
    configuration = {k: v for k, v in to_jsonable(settings).items() if k != "workers"}  # results do not depend on it
    report = {"configuration": configuration, "seeds": settings.seeds, **judge(settings, results),
              "runs": {f"{j.data}/{j.method}/seed{j.seed}": str(Path(RUNS) / Path(j.config.out).name) for j in jobs}}
    stage("figures")
    figures.draw_all(out, settings, results, report["claims"])
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    atomic_write_text(out / CLAIMS_MD, claims_markdown(report))
    atomic_write_json(out / CLAIMS, report)
    return report


def _mean_pm(v: dict, scale: float = 1.0, digits: int = 3) -> str:
    if v.get("mean") is None:
        return "n/a"
    return f"{scale * v['mean']:.{digits}f} ± {scale * v['std']:.{digits}f}"


def _diff(d: dict) -> str:
    if d["mean"] is None:
        return "n/a"
    if d["low"] is None:
        return f"{100 * d['mean']:+.2f} (fewer than 2 seeds: no interval)"
    return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def claims_markdown(report: dict) -> str:
    """The claims as a markdown table (the numbers each claim was judged on, in short)."""
    c = {x["id"]: x for x in report["claims"]}
    S = report["seeds"]
    v = c["real_easy_first"]["values"]
    rows = [("real_easy_first",
             f"running train acc >= {v['threshold']:g}: with the square at iteration {_mean_pm(v['T_with_easy'], 1, 1)}, "
             f"without it at {_mean_pm(v['T_without_easy'], 1, 1)} ({v['without_never_fit_seeds']} of {S} seeds never "
             f"within {v['iterations']} iterations); ratio {_mean_pm(v['T_without_over_T_with'], 1, 1)}")]
    v = c["real_sam_more_uniform"]["values"]
    rows.append(("real_sam_more_uniform", f"mean gap over the first {v['early_iterations']} iterations: SGD "
                 f"{_mean_pm(v['gap_sgd'])}, SAM {_mean_pm(v['gap_sam'])}, SGD+USEFUL {_mean_pm(v['gap_sgd_useful'])}"))
    v = c["real_early_outputs_separate"]["values"]
    rows.append(("real_early_outputs_separate", f"at iteration {v['separate_iteration']}: precision "
                 f"{_mean_pm(v['precision'], 1, 2)}, recall {_mean_pm(v['recall'], 1, 2)}; "
                 f"{_mean_pm(v['upsampled'], 1, 0)} upsampled of whom {v['without_easy_examples']} lack the square "
                 f"(chance precision {v['chance_precision']:.2f})"))
    v = c["real_useful_helps"]["values"]
    acc = v["test_acc_without_easy"]
    rows.append(("real_useful_helps", "test acc without the square: SGD " + _mean_pm(acc["sgd"]) + ", USEFUL "
                 + _mean_pm(acc["useful"]) + ", random " + _mean_pm(acc["random"]) + ", SAM " + _mean_pm(acc["sam"])
                 + f"; paired (points): USEFUL - SGD {_diff(v['useful_minus_sgd'])}, USEFUL - random "
                 f"{_diff(v['useful_minus_random'])}, random - SGD {_diff(v['random_minus_sgd'])}"))
    v = c["real_useful_plain"]["values"]
    acc = v["test_acc"]
    rows.append(("real_useful_plain", "test acc: SGD " + _mean_pm(acc["sgd"]) + ", USEFUL " + _mean_pm(acc["useful"])
                 + ", random " + _mean_pm(acc["random"]) + f"; paired (points): USEFUL - SGD "
                 f"{_diff(v['useful_minus_sgd'])}, USEFUL - random {_diff(v['useful_minus_random'])}"))
    v = c["real_contrast_sweep"]["values"]
    parts = [f"c={g:g}: SGD {a['mean']:.3f}, split P/R {p['mean']:.2f}/{r['mean']:.2f}" for g, a, p, r in
             zip(v["contrast"], v["test_acc_without_easy_sgd"], v["split_precision"], v["split_recall"])]
    rows.append(("real_contrast_sweep", "test acc without the square and the split's precision / recall: "
                 + "; ".join(parts)))
    lines = [f"| claim | holds | numbers (mean ± std over {S} seeds; paired differences: mean [95% interval]) |",
             "| --- | --- | --- |"]
    lines += [f"| {cid} | {'yes' if c[cid]['holds'] else 'no'} | {text} |" for cid, text in rows]
    notes = [f"- {x['id']}: {x['note']}" for x in report["claims"] if x.get("note")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


# ----------------------------------------------------------------------------------------------
# CLI.


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder (claims.json, figures, runs/)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1000 training and 2000 test images, batch 32, "
                        "4 epochs, 2 contrasts (about a minute)")
    parser.add_argument("--overwrite", action="store_true", help="replace the report (and its runs) in --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue the report in --out, reusing runs of exactly the same configuration")
    parser.add_argument("--config", metavar="FILE", default=None, help="a TOML file of these settings")
    add_config_arguments(parser, ReproduceSettings)


def _handler(args: argparse.Namespace) -> int:
    base = QUICK_FIELDS if args.quick else {}
    settings = resolve_config(ReproduceSettings, args, config_path=args.config, base=base)
    if args.overwrite and args.resume:
        raise ConfigError("--resume", message="--resume: give --overwrite or --resume, not both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = reproduce(settings, args.out, overwrite=args.overwrite, resume=args.resume,
                       on_stage=lambda text: log.info("reproduce: %s", text))
    print("\n".join(claims_lines(report)))
    print(f"claims.json, claims.md and figures in {args.out} ({report['seconds']:.1f} s)")
    return 0


def register_commands(register_command) -> None:
    register_command("reproduce", "the real-data claims report: Fashion-MNIST with a planted easy feature, SGD, SAM, "
                     "USEFUL and random upsampling paired by seed (claims.json, figures, runs/)", _arguments, _handler)
