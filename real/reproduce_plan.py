"""The plan of ``useful-train reproduce``: its settings, one job per run, running them, reading them back.

Every run is a run directory ``OUT/runs/DATA-METHOD-seedS-DIGEST``.  DATA is ``c<contrast>`` (planted), ``plain``
(unmodified) or ``long`` (unmodified, the long budget); DIGEST starts the digest of what the run computes
(:func:`real.config.computed_config`), and a stored run is reused only if it computes exactly that
(:func:`check_cached`; the trainer's ``--resume`` refuses a mismatch a second time).  METHOD is ``sgd``, ``sam``
(at ``--rho``), ``useful``, ``random`` (as many examples upsampled at random: the compute-matched baseline),
``sgd_split`` (USEFUL with k = 1, whose main phase is SGD itself, recording the split at the sweep's other
contrasts), ``sam_rho<r>`` (the rho sweep) or ``split_<input>`` (``sgd_split`` clustering another input).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import (ConfigError, check, check_choice, check_int, check_number, check_within,
                                    config_digest, doc)
from theory.useful import SPLIT_ON

from .config import TrainConfig, computed_config
from .distributed import DEVICES

__all__ = ["ReproduceSettings", "QUICK_FIELDS", "FULL_FIELDS", "Job", "RunResult", "RUNS", "plan", "run_digest",
           "data_label", "job_config", "check_cached", "run_jobs", "load_result", "merge_short_windows"]

log = logging.getLogger("real.reproduce")

RUNS = "runs"
LONG = "long"  # the data label of the long-budget arm (the unmodified images)


@dataclass(frozen=True)
class ReproduceSettings:
    """What ``reproduce`` runs; every field is a flag (``--train-subset``, ``--rho-grid``, ...).
    docs/reproduce.md says why each default was chosen."""

    seeds: int = doc(3, "paired seeds (each: the same subset, planted examples and initialization)", "[1, inf)")
    train_subset: int = doc(5000, "training images, drawn per class with the seed", "[20, inf)")
    test_subset: int | None = doc(None, "test images, drawn per class (unset: all 10 000)", "[20, inf)")
    epochs: int = doc(8, "epochs of every run but the long-budget arm's", "[1, inf)")
    batch_size: int = doc(128, "minibatch size", "[2, inf)")
    lr: float = doc(0.1, "peak learning rate (cosine schedule, momentum 0.9, weight decay 5e-4)", "(0, inf)")
    rho: float = doc(0.05, "SAM's radius in the main comparison", "(0, inf)")
    rho_grid: tuple[float, ...] = doc((), "further SAM radii of the rho sweep, each > 0, comma-separated "
                                          "(empty: no sweep; --full: 0.1,0.2,0.5,1)")
    easy_fraction: float = doc(0.9, "fraction of images given the planted square (alpha)", "(0, 1)")
    easy_size: int = doc(4, "side of the planted square in pixels", "[1, 6]")
    contrast: float = doc(0.25, "the clothing's contrast in the main comparison (beta_d analog), in --contrast-grid",
                          "(0, 1]")
    contrast_grid: tuple[float, ...] = doc((0.25, 0.5, 1.0), "contrasts of the sweep, increasing, in (0, 1], >= 2")
    separate_iteration: int = doc(60, "USEFUL's split after this many iterations, 1 to the run's iterations")
    upsample_factor: int = doc(2, "k: copies of each upsampled example", "[2, inf)")
    split_on: Literal[SPLIT_ON] = doc("logits", "what the main USEFUL runs' 2-means clusters, in --split-inputs")
    split_inputs: tuple[str, ...] = doc(SPLIT_ON, "the clustering inputs whose split is measured against "
                                                      "has_easy (logits, softmax, loss; comma-separated)")
    group_window: int = doc(10, "iterations per window of the per-group running training accuracy", "[1, inf)")
    early_iterations: int = doc(120, "the early gap is averaged over the first this many iterations, >= --group-window")
    fit_threshold: float = doc(0.9, "running training accuracy at which a group counts as fit", "(0, 1]")
    easy_first_ratio: float = doc(5.0, "real_easy_first: T_without / T_with at least this", "[1, inf)")
    split_threshold: float = doc(0.9, "the split's precision and recall must reach this", "[0, 1]")
    sweep_tolerance: float = doc(0.005, "the contrast sweep's allowed step against the trend", "[0, inf)")
    long_epochs: int = doc(0, "epochs of the long-budget arm on the unmodified images (0: no arm; --full: 60)",
                           "[0, inf)")
    long_train_subset: int = doc(1000, "training images of the long-budget arm", "[20, inf)")
    long_test_subset: int = doc(2000, "test images of the long-budget arm (evaluated every epoch)", "[20, inf)")
    long_separate_epoch: int = doc(6, "epochs before the long-budget USEFUL runs split, 1 to --long-epochs - 1")
    long_train_acc: float = doc(0.99, "the long-budget regime: each run's final train accuracy at least this",
                                "(0, 1]")
    workers: int = doc(2, "training processes at a time (one thread each)", "[1, 64]")
    device: Literal[DEVICES] = doc("cpu", "where the runs train")
    data_dir: str | None = doc(None, "folder with Fashion-MNIST's four idx files (unset: Debian's copy)")

    def __post_init__(self) -> None:
        check_within(self)
        check_int("--separate-iteration", self.separate_iteration, low=1,
                  high=max(1, self.epochs * (self.train_subset // self.batch_size)))
        check_int("--early-iterations", self.early_iterations, low=self.group_window)
        _check_list("--contrast-grid", self.contrast_grid, "at least two contrasts", 2,
                    lambda c: check_number("--contrast-grid", c, low=0.0, high=1.0, low_open=True))
        check(list(self.contrast_grid) == sorted(set(self.contrast_grid)), "--contrast-grid", self.contrast_grid,
              "strictly increasing contrasts")
        check(self.contrast in self.contrast_grid, "--contrast", self.contrast, "one of --contrast-grid")
        _check_list("--rho-grid", self.rho_grid, "a list of radii", 0,
                    lambda r: check_number("--rho-grid", r, low=0.0, low_open=True))
        _check_list("--split-inputs", self.split_inputs, "at least one of " + ", ".join(SPLIT_ON), 1,
                    lambda x: check_choice("--split-inputs", x, SPLIT_ON))
        check(len(set(self.split_inputs)) == len(self.split_inputs), "--split-inputs", self.split_inputs, "no repeats")
        check(self.split_on in self.split_inputs, "--split-on", self.split_on, "one of --split-inputs")
        if self.long_epochs:
            check(self.long_epochs >= 2, "--long-epochs", self.long_epochs, "0 or at least 2")
            check_int("--long-separate-epoch", self.long_separate_epoch, low=1, high=self.long_epochs - 1)
        check_choice("--device", self.device, DEVICES)
        if self.data_dir is not None:
            check(isinstance(self.data_dir, str) and Path(self.data_dir).expanduser().is_dir(), "--data-dir",
                  self.data_dir, "an existing directory")

    @property
    def rhos(self) -> tuple[float, ...]:
        """The rho sweep's radii, increasing: ``rho`` and those of ``rho_grid``."""
        return tuple(sorted({self.rho, *self.rho_grid}))


def _check_list(flag: str, values: Any, expected: str, least: int, each: Callable[[Any], None]) -> None:
    check(isinstance(values, tuple) and len(values) >= least, flag, values, expected)
    for value in values:
        each(value)


# --quick: fewer seeds, a smaller subset, a shorter budget, two contrasts.
QUICK_FIELDS: dict[str, Any] = {"seeds": 2, "train_subset": 1000, "test_subset": 2000, "epochs": 4, "batch_size": 32,
                                "separate_iteration": 40, "contrast_grid": (0.25, 1.0)}
# --full: the default plus the rho sweep and the long-budget arm.
FULL_FIELDS: dict[str, Any] = {"rho_grid": (0.1, 0.2, 0.5, 1.0), "long_epochs": 60}


@dataclass(frozen=True)
class Job:
    """One training run: ``data`` is ``c<contrast>`` (planted), ``plain`` or ``long``."""

    method: str
    data: str
    seed: int
    config: TrainConfig

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.data, self.method, self.seed)

    @property
    def name(self) -> str:
        return f"{self.data}-{self.method}-seed{self.seed}-{run_digest(self.config)[:10]}"

    @property
    def cost(self) -> float:  # relative work, for scheduling the longest first
        base = 2.0 if self.method.startswith("sam") else 1.3 if self.method in ("useful", "random") else 1.1
        return base * self.config.epochs * (self.config.train_subset or 1)


def run_digest(cfg: TrainConfig) -> str:
    """The run's identity: the digest of what it computes (:func:`real.config.computed_config`)."""
    return config_digest(computed_config(cfg))


def data_label(contrast: float) -> str:
    return f"c{contrast:g}"


def _method_kwargs(s: ReproduceSettings, method: str, data: str) -> dict[str, Any]:
    if method == "sam":
        return dict(optimizer="sam", rho=s.rho)
    if method.startswith("sam_rho"):
        return dict(optimizer="sam", rho=float(method[len("sam_rho"):]))
    if method == "sgd":
        return {}
    split_on = method[len("split_"):] if method.startswith("split_") else s.split_on
    k = s.upsample_factor if method in ("useful", "random") else 1  # k = 1: the main phase is SGD itself
    when = dict(separate_epoch=s.long_separate_epoch) if data == LONG else dict(separate_iteration=s.separate_iteration)
    return dict(useful=True, partition="random" if method == "random" else "useful", upsample_factor=k,
                split_on=split_on, **when)


def job_config(s: ReproduceSettings, method: str, data: str, seed: int, out: Path) -> TrainConfig:
    """The :class:`TrainConfig` of one run, in ``out/runs/``."""
    kw: dict[str, Any] = dict(
        dataset="fashion-mnist", data_dir=s.data_dir, model="cnn-small", epochs=s.epochs, batch_size=s.batch_size,
        lr=s.lr, momentum=0.9, weight_decay=5e-4, schedule="cosine", augment="none", train_subset=s.train_subset,
        test_subset=s.test_subset, seed=seed, deterministic=True, device=s.device, resume=True,
        memory_format="channels_last", eval_batch_size=256)
    if data == LONG:
        kw.update(epochs=s.long_epochs, train_subset=s.long_train_subset, test_subset=s.long_test_subset)
    elif data != "plain":
        kw.update(easy_feature="patch", easy_fraction=s.easy_fraction, easy_size=s.easy_size,
                  contrast=float(data[1:]), group_window=s.group_window)
    cfg = TrainConfig(**kw, **_method_kwargs(s, method, data))
    return dataclasses.replace(cfg, out=str(out / RUNS / Job(method, data, seed, cfg).name))


def plan(s: ReproduceSettings, out: Path) -> list[Job]:
    """Every run of the report: the same ``(data, method)`` pairs for each seed."""
    main = data_label(s.contrast)
    pairs = [(main, m) for m in ("sgd", "sam", "useful", "random")]
    pairs += [(data_label(c), "sgd_split") for c in s.contrast_grid if c != s.contrast]
    pairs += [("plain", m) for m in ("sgd", "useful", "random")]
    pairs += [(main, f"split_{x}") for x in s.split_inputs if x != s.split_on]
    pairs += [(main, f"sam_rho{r:g}") for r in s.rhos if r != s.rho]
    if s.long_epochs:
        pairs += [(LONG, m) for m in ("sgd", "useful", "random")]
    return [Job(method, data, seed, job_config(s, method, data, seed, out))
            for seed in range(s.seeds) for data, method in pairs]


def check_cached(job: Job) -> bool:
    """Whether ``job``'s folder holds a completed run; a folder whose stored configuration computes
    something else is refused (a :class:`ConfigError` on --resume, before anything trains)."""
    from .rundir import CONFIG, load_run_config, read_summary

    path = Path(job.config.out)
    if not (path / CONFIG).exists():
        return False
    stored, wanted = computed_config(load_run_config(path)), computed_config(job.config)
    diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if diff:
        raise ConfigError("--resume", message=f"--resume: {path} holds a run of another configuration ("
                          f"{diff[0]}: {stored.get(diff[0])!r}, the plan asks for {wanted.get(diff[0])!r}); "
                          "move it away or pass --overwrite")
    summary = read_summary(path)
    return bool(summary and summary.get("status") == "completed")


def _train_job(cfg: TrainConfig) -> dict:
    """One run in a worker process (quiet: the parent reports progress)."""
    logging.getLogger("real").setLevel(logging.WARNING)
    from .train import train

    return train(cfg)


def run_jobs(jobs: Sequence[Job], *, workers: int, on_done: Callable[[Job, dict], None]) -> None:
    """Train every job (``workers`` processes, the longest jobs first); a run that does not complete
    is an :class:`EnvironmentFailure` naming it."""
    def done(job: Job, summary: dict) -> None:
        if summary.get("status") != "completed":
            raise EnvironmentFailure(f"run {job.config.out} ended with status {summary.get('status')!r}: "
                                     f"{summary.get('message', '')}")
        on_done(job, summary)

    order = sorted(jobs, key=lambda j: -j.cost)
    if workers == 1:
        for job in order:
            done(job, _train_job(job.config))
        return
    import multiprocessing

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        started = {pool.submit(_train_job, job.config): job for job in order}
        try:
            for future in as_completed(started):
                done(started[future], future.result())
        except BaseException:
            for future in started:
                future.cancel()
            raise


@dataclass
class RunResult:
    """What the claims read of one run (``labels``: its training labels, with a partition)."""

    job: Job | None
    summary: dict
    metrics: list[dict]
    groups: dict | None
    easy: dict | None
    partition: dict | None
    labels: np.ndarray | None = None

    @property
    def final(self) -> dict:
        return [m for m in self.metrics if m["phase"] == "main"][-1]


@functools.lru_cache(maxsize=16)
def _train_labels(dataset: str, data_dir: str | None, subset: int | None, seed: int) -> np.ndarray:
    """The training labels of a run's subset, from the data set (the runs do not store labels)."""
    from .datasets import load_dataset
    from .planted import stratified_subset

    y = load_dataset(dataset, data_dir).train_y.numpy()
    return y[stratified_subset(y, subset, seed)] if subset else y


def load_result(job: Job) -> RunResult:
    from .rundir import read_easy_feature, read_group_accuracy, read_metrics, read_partition, read_summary

    path, cfg = Path(job.config.out), job.config
    planted = cfg.easy_feature != "none"
    groups = merge_short_windows(read_group_accuracy(path)) if planted else None
    if planted and cfg.useful:
        groups = merge_short_windows(groups, "separate_")
    partition = read_partition(path) if cfg.useful else None
    labels = _train_labels(cfg.dataset, cfg.data_dir, cfg.train_subset, cfg.seed) if cfg.useful else None
    return RunResult(job=job, summary=read_summary(path), metrics=read_metrics(path), groups=groups,
                     easy=read_easy_feature(path) if planted else None, partition=partition, labels=labels)


def merge_short_windows(groups: dict, prefix: str = "") -> dict:
    """group_accuracy.npz's windows with each window shorter than half the window length (the end of
    an epoch) merged into the window before it, accuracies recomputed from the counts."""
    start, end = groups[prefix + "start"], groups[prefix + "end"]
    first = np.flatnonzero((end - start >= int(groups[prefix + "window"]) / 2) | (np.arange(len(end)) == 0))
    out = dict(groups)
    if first.size:
        last = np.r_[first[1:] - 1, len(end) - 1]
        out.update({prefix + "start": start[first], prefix + "end": end[last], prefix + "epoch":
                    groups[prefix + "epoch"][first]})
        for key in ("seen", "correct"):
            out[prefix + key] = np.add.reduceat(groups[prefix + key], first, axis=0)
        seen = out[prefix + "seen"]
        out[prefix + "accuracy"] = np.where(seen > 0, out[prefix + "correct"] / np.maximum(seen, 1), np.nan)
    return out
