"""``useful-train reproduce``: the paper's mechanism on real images, as a claims report.

The real-data twin of ``useful-sim reproduce`` (the same claims.json schema, SPEC section 3), in its shape: the
plan (:mod:`real.reproduce_plan`), the claims (:mod:`real.reproduce_claims`), the figures
(:mod:`real.reproduce_figures`) and, here, the report folder, its markdown summary and the command.  The data are
Fashion-MNIST with a planted fast-learnable feature (real/planted.py); each seed is one paired experiment (the
same subset, planted examples and initialization).  docs/reproduce.md gives the runs, the claims' rules and numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import time
from pathlib import Path
from typing import Any, Callable

from theory.plumbing.atomic import atomic_write_json, atomic_write_text
from theory.plumbing.claims import claims_lines, summarize
from theory.plumbing.config import ConfigError, add_config_arguments, resolve_config, to_jsonable

from .reproduce_claims import FULL_IDS, REQUIRED_IDS, early_gap, fit_iteration, judge, split_quality
from .reproduce_plan import (FULL_FIELDS, QUICK_FIELDS, RUNS, Job, ReproduceSettings, RunResult, check_cached,
                             load_result, merge_short_windows, plan, run_digest, run_jobs)

__all__ = ["REQUIRED_IDS", "FULL_IDS", "ReproduceSettings", "Job", "plan", "reproduce", "judge", "summarize",
           "fit_iteration", "early_gap", "merge_short_windows", "split_quality", "run_digest", "check_cached",
           "claims_markdown", "add_arguments", "command", "REPORT_FILES", "FIGURES", "HELP"]

log = logging.getLogger("real.reproduce")

CLAIMS, CLAIMS_MD = "claims.json", "claims.md"
TSNE = "real_split_tsne.png"  # the paper's Figure 3: t-SNE of the outputs at the split
FIGURES = ("real_easy_first.png", "real_sam_more_uniform.png", "real_early_outputs_separate.png",
           "real_useful_helps.png", "real_contrast_sweep.png", "real_split_inputs.png", TSNE)
REPORT_FILES = (CLAIMS, CLAIMS_MD, *FIGURES, "real_sam_rho_sweep.png")  # what --overwrite removes (and the runs)
_DEBIAN_PACKAGE = "dataset-fashion-mnist"
HELP = ("the real-data claims report: Fashion-MNIST with a planted easy feature, SGD, SAM, USEFUL and random "
        "upsampling paired by seed (claims.json, claims.md, figures, runs/)")


def check_data(data_dir: str | None) -> None:
    """Fashion-MNIST must be readable before anything starts: otherwise one line naming Debian's package."""
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
    """Refuse a folder that holds a report unless ``--overwrite`` (remove the report's files and run directories,
    nothing else) or ``--resume`` (keep the runs: reused only for their exact configuration, resumed if unfinished)."""
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
        (out / name).unlink(missing_ok=True)
    if runs.is_dir():
        for run in sorted(runs.iterdir()):
            if run.is_dir() and is_run_dir(run):
                for name in (*RUN_FILES, "run.lock"):
                    (run / name).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run.rmdir()  # kept if the user put something else in it
        with contextlib.suppress(OSError):
            runs.rmdir()


def reproduce(settings: ReproduceSettings, out_dir: str | Path, *, overwrite: bool = False, resume: bool = False,
              on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train every run (reusing those of the same configuration already in ``OUT/runs``), judge
    the claims, write the figures, claims.md and claims.json (last); return the report."""
    from . import reproduce_figures as figures

    t_start = time.perf_counter()
    stage = on_stage or (lambda text: log.info("%s", text))
    out = Path(out_dir)
    check_data(settings.data_dir)
    prepare_out(out, overwrite=overwrite, resume=resume)
    jobs = plan(settings, out)
    cached = [job for job in jobs if check_cached(job)]  # refuses a folder of another configuration first
    todo = [job for job in jobs if job not in cached]
    (out / RUNS).mkdir(parents=True, exist_ok=True)
    count = itertools.count(1)

    def done(job: Job, summary: dict) -> None:
        stage(f"[{next(count)}/{len(todo)}] {job.name}: test acc {summary['final_test_acc']:.4f} "
              f"({summary['wall_seconds']:.0f} s)")

    stage(f"{len(jobs)} runs ({settings.seeds} seeds), {len(cached)} reused, {len(todo)} to train on "
          f"{settings.workers} worker(s) in {out / RUNS}")
    run_jobs(todo, workers=settings.workers, on_done=done)
    results: dict[tuple[str, str, int], RunResult] = {j.key: load_result(j) for j in jobs}
    stage("claims")
    configuration = {k: v for k, v in to_jsonable(settings).items() if k != "workers"}  # results do not depend on it
    report = {"configuration": configuration, "seeds": settings.seeds, **judge(settings, results),
              "runs": {f"{j.data}/{j.method}/seed{j.seed}": str(Path(RUNS) / Path(j.config.out).name) for j in jobs}}
    stage("figures")
    report["figures"] = figures.draw_all(out, settings, results, report["claims"])
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    atomic_write_text(out / CLAIMS_MD, claims_markdown(report))
    atomic_write_json(out / CLAIMS, report)
    return report


def _mean_pm(v: dict, digits: int = 3) -> str:
    return "n/a" if v.get("mean") is None else f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}"


def _diff(d: dict) -> str:
    if d["mean"] is None:
        return "n/a"
    if d["low"] is None:
        return f"{100 * d['mean']:+.2f} (fewer than 2 seeds: no interval)"
    return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"


def _row_plain(v: dict, S: int) -> str:
    acc, tr = v["test_acc"], v["train_acc_final"]
    return ("test acc: SGD " + _mean_pm(acc["sgd"]) + ", USEFUL " + _mean_pm(acc["useful"]) + ", random "
            + _mean_pm(acc["random"]) + f"; paired (points): USEFUL - SGD {_diff(v['useful_minus_sgd'])}, USEFUL - "
            f"random {_diff(v['useful_minus_random'])}; final train acc SGD {_mean_pm(tr['sgd'])}, USEFUL "
            f"{_mean_pm(tr['useful'])}, random {_mean_pm(tr['random'])}")


ROWS: dict[str, Callable[[dict, int], str]] = {  # each claim's numbers in short: (values, seeds) -> text
    "real_easy_first": lambda v, S: (
        f"running train acc >= {v['threshold']:g}: with the square at iteration {_mean_pm(v['T_with_easy'], 1)}, "
        f"without it at {_mean_pm(v['T_without_easy'], 1)} ({v['without_never_fit_seeds']} of {S} seeds never "
        f"within {v['iterations']} iterations); ratio {_mean_pm(v['T_without_over_T_with'], 1)}"),
    "real_sam_more_uniform": lambda v, S: (
        f"mean gap over the first {v['early_iterations']} iterations: SGD {_mean_pm(v['gap_sgd'])}, SAM (rho "
        f"{v['rho']:g}) {_mean_pm(v['gap_sam'])}, SGD+USEFUL {_mean_pm(v['gap_sgd_useful'])}"),
    "real_early_outputs_separate": lambda v, S: (
        f"at iteration {v['separate_iteration']} on the {v['split_on']}: precision {_mean_pm(v['precision'], 2)}, "
        f"recall {_mean_pm(v['recall'], 2)}; {_mean_pm(v['upsampled'], 0)} upsampled of whom "
        f"{v['without_easy_examples']} lack the square (chance precision {v['chance_precision']:.2f})"),
    "real_useful_helps": lambda v, S: (
        "test acc without the square: " + ", ".join(f"{name} {_mean_pm(v['test_acc_without_easy'][m])}" for m, name in
                                                   (("sgd", "SGD"), ("useful", "USEFUL"), ("random", "random"),
                                                    ("sam", "SAM")))
        + f"; paired (points): USEFUL - SGD {_diff(v['useful_minus_sgd'])}, USEFUL - random "
          f"{_diff(v['useful_minus_random'])}, random - SGD {_diff(v['random_minus_sgd'])}"),
    "real_useful_plain": _row_plain,
    "real_contrast_sweep": lambda v, S: "test acc without the square and the split's precision / recall: " + "; ".join(
        f"c={g:g}: SGD {a['mean']:.3f}, split P/R {p['mean']:.2f}/{r['mean']:.2f}" for g, a, p, r in
        zip(v["contrast"], v["test_acc_without_easy_sgd"], v["split_precision"], v["split_recall"])),
    "real_split_inputs": lambda v, S: "precision / recall vs has_easy == False: " + "; ".join(
        f"{n} {_mean_pm(x['precision'], 2)} / {_mean_pm(x['recall'], 2)}" for n, x in v["inputs"].items()),
    "real_sam_rho_sweep": lambda v, S: (
        f"mean early gap, SGD {_mean_pm(v['gap_sgd'])} (square fit at {_mean_pm(v['T_with_easy_sgd'], 0)}); "
        + "; ".join(f"rho {r:g}: {_mean_pm(g)} (square fit at {_mean_pm(t, 0)})" for r, g, t in
                    zip(v["rho"], v["gap"], v["T_with_easy"]))
        + f"; SAM more uniform from rho = {'none' if v['onset_rho'] is None else format(v['onset_rho'], 'g')}"),
    "real_long_budget": lambda v, S: (
        f"{v['epochs']} epochs, {v['train_subset']} images, regime (train acc >= {v['train_acc_required']:g}) "
        f"{'reached' if v['regime_reached'] else 'NOT reached'}; " + _row_plain(v, S)),
}


def claims_markdown(report: dict) -> str:
    """The claims as a markdown table (the numbers each claim was judged on, in short), the split
    inputs' table (per input, precision and recall per seed) and the notes of the claims that do not hold."""
    S = report["seeds"]
    lines = [f"| claim | holds | numbers (mean ± std over {S} seeds; paired differences: mean [95% interval]) |",
             "| --- | --- | --- |"]
    lines += [f"| {c['id']} | {'yes' if c['holds'] else 'no'} | {ROWS[c['id']](c['values'], S)} |"
              for c in report["claims"]]
    split = next(c["values"] for c in report["claims"] if c["id"] == "real_split_inputs")
    lines += ["", f"The split at iteration {split['separate_iteration']} against has_easy == False:", "",
              "| split on | precision (per seed) | recall (per seed) | upsampled (mean) | meets the rule |",
              "| --- | --- | --- | ---: | --- |"]
    for name, x in split["inputs"].items():
        p, r = (", ".join(f"{a:.2f}" for a in x[k]["per_seed"]) for k in ("precision", "recall"))
        lines.append(f"| {name} | {p} | {r} | {x['upsampled']['mean']:.0f} | {'yes' if x['meets_rule'] else 'no'} |")
    notes = [f"- {x['id']}: {x['note']}" for x in report["claims"] if x.get("note")]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="report folder (claims.json, claims.md, "
                        "figures, runs/); required, no default")
    switches = {
        "--quick": "2 seeds, 1000 training and 2000 test images, batch 32, 4 epochs, 2 contrasts (a few minutes)",
        "--full": "add the rho sweep (--rho-grid 0.1,0.2,0.5,1) and the long-budget arm (--long-epochs 60)",
        "--overwrite": "replace the report (and its runs) in --out",
        "--resume": "continue the report in --out, reusing runs of exactly the same configuration"}
    for flag, text in switches.items():
        parser.add_argument(flag, action="store_true", help=text + "; off by default")
    parser.add_argument("--config", metavar="FILE", default=None, help="a TOML file of these settings (default: none)")
    add_config_arguments(parser, ReproduceSettings)


def command(args: argparse.Namespace) -> int:
    base = {**(QUICK_FIELDS if args.quick else {}), **(FULL_FIELDS if args.full else {})}
    settings = resolve_config(ReproduceSettings, args, config_path=args.config, base=base)
    if args.overwrite and args.resume:
        raise ConfigError("--resume", message="--resume: give --overwrite or --resume, not both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = reproduce(settings, args.out, overwrite=args.overwrite, resume=args.resume,
                       on_stage=lambda text: log.info("reproduce: %s", text))
    print("\n".join(claims_lines(report)))
    print(f"claims.json, claims.md and figures in {args.out} ({report['seconds']:.1f} s)")
    return 0
