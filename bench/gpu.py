"""One command for the GPU machine: the CUDA paths proved, and measured against what users would run.

    PYTHONPATH=. python3 bench/gpu.py --out DIR            # one H200 (or H100): at most ~5 minutes
    PYTHONPATH=. python3 bench/gpu.py --out DIR --smoke    # every section on the CPU, tiny sizes (CI)

Sections, in order; each has a time budget (seconds on one H200, estimated before any GPU run), and a
section that fails is recorded in gpu.json with its error while the next one still runs:

1. ``correctness`` (budget 170 s, a timeout): ``pytest -m cuda tests`` in a subprocess (tests/test_cuda.py:
   SAM/ASAM on CUDA in float32 against theory's float64 step, kill -9 and resume on CUDA bitwise equal
   to the uninterrupted run, bf16 + channels_last (+ torch.compile) against the float32 loss curve,
   the USEFUL split of CUDA logits against the CPU split; tests/test_real_augment.py: crop/flip and
   TrivialAugmentWide on CUDA equal to the CPU; tests/test_sim_backends.py: the sims torch backend on
   CUDA against the float64 reference, batched against one by one).  Counts and the failures' names
   from the JUnit file.
2. ``throughput`` (85 s): ResNet18 on 50,000 CIFAR-shaped uint8 images made on the device, batch 128
   and 512, SGD and SAM: real/'s loop (:func:`real.train.train_epoch`, bf16 + channels_last as a run
   on CUDA does by default), full epochs, against the plain loop of bench/train_throughput.py (torch
   DataLoader, per-sample CPU crop/flip in 8 worker processes, float32, NCHW; 100 / 30 steps after
   5 warm-up steps).  Then SGD at batch 128 for resnet34, vgg19, densenet121 and vit-s (50 steps after
   3 warm-up steps), each with its peak GPU memory.
3. ``split`` (10 s): :func:`real.useful.split` on the 50,000 images as a run calls it, as a fraction
   of one SGD epoch and of a 200-epoch budget (timed right after the SGD epoch at batch 128).
4. ``sims`` (20 s): bench/sim_sweep.py's sweep (256 runs of its small size, 100 steps; GD in float64
   and SAM in float32): the torch backend on CUDA with all runs in one batch, against the numba
   backend running the runs one after another (64 timed, extrapolated to 256), and against numba
   with the runs spread over all CPU cores.
5. ``compile`` (what time is left, if at least 90 s): ResNet18 SGD at batch 512 under torch.compile
   (bench/train_throughput.py --compile in a subprocess with a timeout), against the eager figure.

The whole command keeps to ``--budget`` seconds (285 by default): each section's deadline leaves
the later sections their budgets, cases past a deadline are skipped and named.  Files in DIR:
gpu.json (everything; rewritten after each section), gpu.log (progress, the pytest output),
pytest_cuda.xml (JUnit).  The last line printed is one JSON object:
each section's status, the pytest counts, the headline figures and the targets (issue 10) with
whether each is met (only on an H100/H200, else "not measured: ...").  Exit status 0 when every
section ran without error or failed test (a target missed is a figure, not a failure), 1 otherwise,
2 for bad input.

Targets (figures, never timed tests; on one H100/H200): ResNet18 SGD with bf16 at batch 512 >= 20,000
images/s; SAM >= 0.45 of SGD's rate; real/ >= 3x the plain loop with SGD at batch 128; the split
< 0.1 % of a 200-epoch budget (SGD, batch 128); the sims sweep >= 50x numba-sequential.

``--smoke``: the same code on the CPU with cnn-small, 300 images, batch 32 and 64, mlp as the other
model, the sims' smoke size, the compile section without compiling: under a minute, for CI.
``--cpu-dry-run`` (not in --help): the GPU plan's code paths at full model sizes on the CPU with
1-2 steps, to catch on a CPU what would otherwise kill the GPU run.  ``--sections a,b`` reruns a
subset (e.g. after a fix), ``--budget S`` changes the whole command's time.

Reuse: the throughput and split pieces are bench/train_throughput.py's; the sims section imports
bench/sim_sweep.py's timers and bench/sim_cpu.py's problems (sim_sweep's main() builds its runs
inline and prints one configuration, so :func:`sims_case` rebuilds the same runs: an adapter).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import sim_cpu  # noqa: E402  (bench/sim_cpu.py: the sweep's sizes, problems and run specs)
import sim_sweep  # noqa: E402  (bench/sim_sweep.py: its timers)
import torch  # noqa: E402
import train_throughput as tt  # noqa: E402

from real import distributed as D  # noqa: E402
from real.phase import build_phase, process_settings  # noqa: E402
from sims.backend_numba import NumbaBackend  # noqa: E402
from sims.backend_torch import TorchBackend  # noqa: E402
from theory.plumbing.atomic import atomic_write_json, to_json  # noqa: E402

SECTIONS = ("correctness", "throughput", "split", "sims", "compile")
FILES = ("gpu.json", "gpu.log", "pytest_cuda.xml")
SIMS_TARGET = 50.0  # torch on CUDA over numba running the runs one after another


# ----------------------------------------------------------------------------------------------
# What to run: one plan per mode.


@dataclass(frozen=True)
class Plan:
    mode: str  # "gpu", "smoke" or "cpu-dry-run"
    device: str  # "cuda" or "cpu"
    budget_s: float  # the whole command
    budgets: dict[str, float]  # per section (compile: the least time left for it to start)
    # 1. correctness
    pytest_cuda: tuple[str, ...]  # what `pytest -m cuda` is given
    # 2. throughput
    n: int
    model: str
    batch_sizes: tuple[int, ...]
    optimizers: tuple[str, ...]
    real_steps: int | None  # None: full epochs
    real_warmup: int
    ref_steps: dict[int, int]  # per batch size
    ref_warmup: int
    workers: int
    models: tuple[str, ...]
    model_batch: int
    model_steps: int
    model_warmup: int
    # 4. sims
    sims_size: dict[str, int]
    sims_runs: int
    sims_steps: int
    sims_cases: tuple[tuple[str, str], ...]  # (rule, dtype)
    numba_sequential_runs: int
    plain_runs: int
    # 5. compile
    compile: bool
    compile_batch: int
    compile_steps: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def make_plan(mode: str, cpus: int) -> Plan:
    small = dict(sim_cpu.SIZES["small"])
    if mode == "gpu":
        return Plan(
            mode=mode, device="cuda", budget_s=285.0,
            budgets={"correctness": 170.0, "throughput": 85.0, "split": 10.0, "sims": 20.0, "compile": 90.0},
            pytest_cuda=("tests",),
            n=50_000, model="resnet18", batch_sizes=(128, 512), optimizers=("sgd", "sam"),
            real_steps=None, real_warmup=3, ref_steps={128: 100, 512: 30}, ref_warmup=5, workers=min(8, cpus),
            models=("resnet34", "vgg19", "densenet121", "vit-s"), model_batch=128, model_steps=50, model_warmup=3,
            sims_size=small, sims_runs=256, sims_steps=100, sims_cases=(("gd", "float64"), ("sam", "float32")),
            numba_sequential_runs=64, plain_runs=4,
            compile=True, compile_batch=512, compile_steps=50,
        )
    if mode == "smoke":
        return Plan(
            mode=mode, device="cpu", budget_s=600.0,
            budgets={"correctness": 240.0, "throughput": 120.0, "split": 60.0, "sims": 60.0, "compile": 5.0},
            pytest_cuda=("tests/test_cuda.py",),
           
            n=300, model="cnn-small", batch_sizes=(32, 64), optimizers=("sgd", "sam"),  # last batches 12, 44
            real_steps=None, real_warmup=1, ref_steps={32: 2, 64: 2}, ref_warmup=1, workers=0,
            models=("mlp",), model_batch=32, model_steps=2, model_warmup=1,
            sims_size=dict(sim_cpu.SMOKE_SIZES["small"]), sims_runs=8, sims_steps=10,
            sims_cases=(("gd", "float64"), ("sam", "float32")), numba_sequential_runs=2, plain_runs=1,
            compile=False, compile_batch=64, compile_steps=2,
            notes=("smoke: the compile section runs its subprocess without compiling (minutes on a CPU)",),
        )
    if mode == "cpu-dry-run":  # the GPU plan's sizes and code paths on the CPU, 1-2 steps each
        gpu = make_plan("gpu", cpus)
        return Plan(**{
            **asdict(gpu), "mode": mode, "device": "cpu", "budget_s": 7200.0,
            "budgets": {"correctness": 1200.0, "throughput": 3600.0, "split": 600.0, "sims": 600.0, "compile": 5.0},
            # 1360 images leave the same last batch as 50,000 at batch 128 (80).  Batch 512 is left out:
            # the same code at 4x the cost (a ResNet18 step at 512 takes minutes on 2 busy cores).
            "n": 1360, "batch_sizes": (128,), "real_steps": 1, "real_warmup": 1, "ref_steps": {128: 1},
            "ref_warmup": 1, "workers": 2, "model_steps": 1, "model_warmup": 1, "sims_steps": 2,
            "numba_sequential_runs": 2, "plain_runs": 1, "compile": False, "compile_batch": 128, "compile_steps": 1,
            "notes": ("cpu-dry-run: the GPU plan at batch 128 only, n=1360, 1-2 steps; the compile section "
                      "runs its subprocess without compiling",),
        })
    raise ValueError(mode)


# ----------------------------------------------------------------------------------------------
# Bookkeeping: the report, the log, the clock.


class Report:
    """gpu.json's content, rewritten atomically after every section; gpu.log beside it."""

    def __init__(self, out: Path, plan: Plan):
        self.out, self.plan = out, plan
        self.log_path = out / "gpu.log"
        self.log_path.write_text("")
        self.data: dict[str, Any] = {"bench": "gpu", "mode": plan.mode, "plan": asdict(plan), "sections": {}}
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        with open(self.log_path, "a") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        atomic_write_json(self.out / "gpu.json", self.data)


class Clock:
    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.monotonic(), budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def deadline(self, budget_s: float, reserve_s: float) -> float:
        """A section's deadline: its own budget, and never into the ``reserve_s`` of later sections."""
        return min(time.monotonic() + budget_s, self.start + self.budget_s - reserve_s)


@dataclass
class Context:
    """What sections hand on to later ones (the device, the data, the SGD epoch times, the split)."""

    plan: Plan
    report: Report
    info: D.DistInfo | None = None
    data: Any = None
    rows: list[dict] = field(default_factory=list)
    split_raw: dict | None = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:500] if text else type(err).__name__


def release_memory(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except Exception:  # a broken context: the next section records its own error
            pass


# ----------------------------------------------------------------------------------------------
# The machine.


def machine(plan: Plan, device: torch.device) -> dict:
    out: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
        "loadavg_1min": os.getloadavg()[0], "source_digest": source_digest(),
    }
    try:
        import numba

        out["numba"] = numba.__version__
    except Exception as err:  # pragma: no cover - numba is a dependency
        out["numba"] = short_error(err)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_bytes=props.total_memory, multiprocessors=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                                  "temperature.gpu,power.draw,memory.used", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=15)
            out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:300]
        except (OSError, subprocess.TimeoutExpired) as err:
            out["nvidia_smi"] = short_error(err)
    return out


def source_digest() -> str:
    """SHA-256 over the package and bench sources (which code the figures are of)."""
    h = hashlib.sha256()
    for folder in ("theory", "sims", "real", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# 1. Correctness: pytest -m cuda in a subprocess.


def run_pytest(name: str, args: tuple[str, ...], report: Report, timeout_s: float) -> dict:
    """``python -m pytest ARGS`` (own process group, killed whole on timeout), output into gpu.log."""
    junit = report.out / f"pytest_{name}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
           f"--junitxml={junit}", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    report.say(f"pytest ({name}, timeout {timeout_s:.0f} s): {' '.join(args)}")
    t = time.monotonic()
    with open(report.log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGINT)  # pytest stops and still writes the JUnit file of what ran
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        finally:  # the whole group: killed-run subprocesses, compile workers
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        rc = proc.wait()
    result: dict[str, Any] = {"args": list(args), "returncode": rc, "timed_out": timed_out,
                              "seconds": time.monotonic() - t, "junit": junit.name}
    try:
        result.update(parse_junit(junit))
    except (OSError, ET.ParseError) as err:
        result.update(counts=None, failures=[], junit_error=short_error(err))
    return result


def parse_junit(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failures, skips = [], {}
    for case in root.iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                failures.append({"test": test, "kind": tag, "message": (el.get("message") or "")[:800]})
        el = case.find("skipped")
        if el is not None:
            reason = (el.get("message") or "")[:200]
            skips[reason] = skips.get(reason, 0) + 1
    return {"counts": counts, "failures": failures, "skip_reasons": skips}


def section_correctness(ctx: Context, deadline: float) -> dict:
    plan, report = ctx.plan, ctx.report
    runs = [run_pytest("cuda", ("-m", "cuda", *plan.pytest_cuda), report, deadline - time.monotonic())]
    total = {k: 0 for k in ("tests", "passed", "failures", "errors", "skipped")}
    failures: list[dict] = []
    problems = []
    for r in runs:
        if r.get("skipped"):
            problems.append(f"not run: {' '.join(r['args'])}")
            continue
        if r["timed_out"]:
            problems.append(f"timed out: {' '.join(r['args'])}")
        elif r.get("counts") is None:
            problems.append(f"no JUnit report: {' '.join(r['args'])} (exit {r['returncode']})")
        elif r["returncode"] not in (0,):
            problems.append(f"exit {r['returncode']}: {' '.join(r['args'])}")
        for k in total:
            total[k] += (r.get("counts") or {}).get(k, 0)
        failures += r.get("failures", [])
    cuda = plan.device == "cuda"
    if cuda and total["passed"] == 0:
        problems.append("no test passed on CUDA (all skipped?)")
    status = "ok" if not problems and not failures else "failed"
    note = None if cuda else "on the CPU every CUDA test is skipped: this checks the invocation only"
    report.say(f"correctness: {total['passed']} passed, {total['failures'] + total['errors']} failed, "
               f"{total['skipped']} skipped" + (f"; {'; '.join(problems)}" if problems else ""))
    for f in failures:
        report.say(f"  FAILED {f['test']}: {f['message'][:200]}")
    return {"status": status, "counts": total, "failures": failures, "problems": problems, "runs": runs, "note": note}


# ----------------------------------------------------------------------------------------------
# 2. Throughput, and 3. the split.


def ensure_data(ctx: Context) -> None:
    if ctx.info is None:
        ctx.info = D.setup(ctx.plan.device)
    if ctx.data is None:
        ctx.data = tt.make_data(ctx.plan.n, 256, ctx.info.device)


def run_defaults(device: torch.device) -> tuple[bool, bool]:
    """(bf16, channels_last) as a run's ``auto`` precision and memory format choose them."""
    return device.type == "cuda", device.type == "cuda"


def section_throughput(ctx: Context, deadline: float) -> dict:
    plan, report = ctx.plan, ctx.report
    ensure_data(ctx)
    info, data = ctx.info, ctx.data
    device = info.device
    bf16, channels_last = run_defaults(device)
    cases, models, errors, skipped = [], [], [], []
    first_sgd_batch = min(plan.batch_sizes) if "sgd" in plan.optimizers else None
    for bs in plan.batch_sizes:
        for opt in plan.optimizers:
            name = f"{plan.model} {opt} b{bs}"
            if time.monotonic() > deadline:
                skipped.append(name)
                continue
            try:
                cfg = tt.bench_config(plan.model, opt, bs, plan.n, plan.device, bf16=bf16, channels_last=channels_last)
                with process_settings(cfg, device):
                    real, ph = tt.real_case(cfg, data, info, steps=plan.real_steps, warmup=plan.real_warmup)
                    if opt == "sgd" and bs == first_sgd_batch:
                        try:  # the split right after the epoch it is compared with (section 3 reports it)
                            ctx.split_raw = {**tt.split_time(ph, data, info, cfg), "batch_size": bs}
                        except Exception as err:
                            ctx.split_raw = {"error": short_error(err), "traceback": traceback.format_exc()[-3000:]}
                    del ph
                    release_memory(device)
                    ref = tt.reference_case(cfg, data, device, steps=plan.ref_steps[bs], warmup=plan.ref_warmup,
                                            workers=plan.workers)
                case = {"optimizer": opt, "batch_size": bs, "real": real, "reference": ref,
                        "ratio": real["img_s"] / ref["img_s"]}
                cases.append(case)
                ctx.rows.append(tt.case_row(case))
                report.say(f"{name}: real/ {real['img_s']:,.0f} img/s ({real['step_ms']:.2f} ms/step, epoch "
                           f"{real['epoch_s']:.2f} s{' extrapolated' if real['epoch_s_extrapolated'] else ''}), "
                           f"plain loop {ref['img_s']:,.0f} img/s: x{case['ratio']:.2f}"
                           + (f", peak {real['peak_mem_bytes'] / 2**30:.2f} GiB" if real["peak_mem_bytes"] else ""))
            except Exception as err:
                errors.append({"case": name, "error": short_error(err), "traceback": traceback.format_exc()[-3000:]})
                report.say(f"{name}: ERROR {short_error(err)}")
            finally:
                release_memory(device)
    for model in plan.models:
        name = f"{model} sgd b{plan.model_batch}"
        if time.monotonic() > deadline:
            skipped.append(name)
            continue
        try:
            cfg = tt.bench_config(model, "sgd", plan.model_batch, plan.n, plan.device, bf16=bf16,
                                  channels_last=channels_last)
            with process_settings(cfg, device):
                real, ph = tt.real_case(cfg, data, info, steps=plan.model_steps, warmup=plan.model_warmup)
                del ph
            models.append({"model": model, "optimizer": "sgd", "batch_size": plan.model_batch, "img_s": real["img_s"],
                           "step_ms": real["step_ms"], "epoch_s": real["epoch_s"],
                           "steps_measured": real["steps_measured"], "peak_mem_bytes": real["peak_mem_bytes"],
                           "data_prep_share": real["data_prep_share"], "host_syncs": real["host_syncs"]})
            report.say(f"{name}: real/ {real['img_s']:,.0f} img/s"
                       + (f", peak {real['peak_mem_bytes'] / 2**30:.2f} GiB" if real["peak_mem_bytes"] else ""))
        except Exception as err:
            errors.append({"case": name, "error": short_error(err), "traceback": traceback.format_exc()[-3000:]})
            report.say(f"{name}: ERROR {short_error(err)}")
        finally:
            release_memory(device)
    status = "failed" if errors else ("partial" if skipped else "ok")
    return {"status": status, "bf16": bf16, "channels_last": channels_last, "n": plan.n, "model": plan.model,
            "reference": {"loader": "torch DataLoader over a Dataset, per-sample CPU crop (pad 4) + flip + normalize",
                          "workers": plan.workers, "dtype": "float32", "layout": "NCHW", "autocast": False,
                          "compile": False, "pin_memory": device.type == "cuda"},
            "epoch_time": "full epochs" if plan.real_steps is None else f"extrapolated from {plan.real_steps} steps",
            "cases": [tt.case_row(c) for c in cases], "cases_full": cases, "models": models,
            "errors": errors, "skipped": skipped}


def section_split(ctx: Context, deadline: float) -> dict:
    plan = ctx.plan
    raw = ctx.split_raw
    if raw is None or "error" in raw:  # the throughput section did not time it: a fresh model (same cost)
        ensure_data(ctx)
        device = ctx.info.device
        bf16, channels_last = run_defaults(device)
        bs = min(plan.batch_sizes)
        cfg = tt.bench_config(plan.model, "sgd", bs, plan.n, plan.device, bf16=bf16, channels_last=channels_last)
        with process_settings(cfg, device):
            ph = build_phase("split", cfg, ctx.data, ctx.info)
            raw = {**tt.split_time(ph, ctx.data, ctx.info, cfg), "batch_size": bs, "model": "freshly initialized",
                   "earlier_error": None if ctx.split_raw is None else ctx.split_raw.get("error")}
            del ph
    epochs = {r["batch_size"]: r["real_epoch_s"] for r in ctx.rows if r["optimizer"] == "sgd"}
    fractions = {str(bs): {"sgd_epoch_s": e, "split_over_epoch": raw["split_s"] / e,
                           "split_over_budget": raw["split_s"] / (tt.BUDGET_EPOCHS * e)} for bs, e in epochs.items()}
    ctx.report.say(f"split: {raw['split_s']:.3f} s ({raw['compute_outputs_s']:.3f} s outputs, "
                   f"{raw['partition_s']:.3f} s partition)"
                   + "".join(f"; batch {bs}: {100 * f['split_over_epoch']:.1f} % of an SGD epoch, "
                             f"{100 * f['split_over_budget']:.3f} % of {tt.BUDGET_EPOCHS} epochs"
                             for bs, f in fractions.items()))
    return {"status": "ok" if fractions else "partial", **raw, "budget_epochs": tt.BUDGET_EPOCHS, "by_batch": fractions,
            "note": None if fractions else "no SGD epoch was measured: no fractions"}


# ----------------------------------------------------------------------------------------------
# 4. The sims sweep (an adapter: bench/sim_sweep.py times one configuration in its main()).


def sims_case(plan: Plan, rule: str, dtype: str, device: str, deadline: float, report: Report) -> dict:
    """bench/sim_sweep.py's runs (its seeds, learning rates and radii), timed with its timers."""
    size, R, steps = plan.sims_size, plan.sims_runs, plan.sims_steps
    problems = [sim_cpu.make_problem(size, seed=1000 + r) for r in range(R)]
    rng = np.random.default_rng(0)
    lrs, rhos = rng.uniform(0.2, 0.5, R), rng.uniform(0.0, 0.03, R)
    specs = [sim_cpu.make_spec(data, W0, rule, lr=float(lr), rho=float(rho))
             for (data, W0), lr, rho in zip(problems, lrs, rhos)]
    torch_backend = TorchBackend(specs, dtype=dtype, device=device)
    t_torch = sim_sweep.time_batched(torch_backend, steps, device)
    per_run = []  # numba, one run after the other (each NumbaBackend holds one run)
    for spec in specs[: plan.numba_sequential_runs]:
        if len(per_run) >= 2 and time.monotonic() > deadline:
            break
        per_run.append(sim_sweep.time_batched(NumbaBackend([spec], dtype=dtype), steps, "cpu"))
    numba_seq = float(np.mean(per_run)) * R
    cores_backend = NumbaBackend(specs, dtype=dtype)
    t_cores = sim_sweep.time_batched(cores_backend, steps, "cpu")
    # Both batched backends advanced 2 + steps steps from the same start: their weights must agree.
    a, b = torch_backend.weights(), cores_backend.weights()
    agreement = float(np.max(np.linalg.norm((a - b).reshape(R, -1), axis=1) / np.linalg.norm(b.reshape(R, -1), axis=1)))
    plain = sim_sweep.time_plain(problems[: plan.plain_runs], dtype, rule, steps, device) * R
    out = {"rule": rule, "dtype": dtype, "runs": R, "steps": steps, "size": size, "device": device,
           "torch_path": torch_backend.path, "torch_batched_s": t_torch,
           "numba_sequential_s": numba_seq, "numba_sequential_runs_timed": len(per_run),
           "numba_sequential_extrapolated": len(per_run) < R,
           "numba_all_cores_s": t_cores, "numba_threads": min(R, cores_backend.threads),
           "plain_torch_sequential_s": plain, "plain_runs_timed": min(plan.plain_runs, R),
           "speedup_over_numba_sequential": numba_seq / t_torch, "speedup_over_numba_all_cores": t_cores / t_torch,
           "speedup_over_plain_torch": plain / t_torch, "max_rel_diff_torch_vs_numba": agreement}
    report.say(f"sims {rule}/{dtype}: torch on {device} {t_torch:.3f} s for {R} runs x {steps} steps; numba one "
               f"after another {numba_seq:.2f} s (x{out['speedup_over_numba_sequential']:.1f}), numba on "
               f"{out['numba_threads']} threads {t_cores:.3f} s (x{out['speedup_over_numba_all_cores']:.1f}), plain "
               f"torch {plain:.2f} s (x{out['speedup_over_plain_torch']:.1f}); weights agree to {agreement:.1e}")
    return out


def section_sims(ctx: Context, deadline: float) -> dict:
    plan = ctx.plan
    cases, errors, skipped = [], [], []
    for rule, dtype in plan.sims_cases:
        if time.monotonic() > deadline:
            skipped.append(f"{rule}/{dtype}")
            continue
        try:
            cases.append(sims_case(plan, rule, dtype, plan.device, deadline, ctx.report))
        except Exception as err:
            errors.append({"case": f"{rule}/{dtype}", "error": short_error(err),
                           "traceback": traceback.format_exc()[-3000:]})
            ctx.report.say(f"sims {rule}/{dtype}: ERROR {short_error(err)}")
    status = "failed" if errors else ("partial" if skipped else "ok")
    return {"status": status, "cases": cases, "errors": errors, "skipped": skipped, "target": SIMS_TARGET,
            "same_runs_as": "bench/sim_sweep.py (seeds 1000+r, lr ~ U(0.2, 0.5), rho ~ U(0, 0.03) from seed 0)"}


# ----------------------------------------------------------------------------------------------
# 5. torch.compile (if time is left).


def section_compile(ctx: Context, deadline: float) -> dict:
    plan, report = ctx.plan, ctx.report
    cmd = [sys.executable, str(HERE / "train_throughput.py"), "--device", plan.device, "--model", plan.model,
           "--n", str(plan.n), "--batch-sizes", str(plan.compile_batch), "--optimizers", "sgd",
           "--steps", str(plan.compile_steps), "--warmup", str(plan.real_warmup), "--no-reference", "--no-split"]
    if plan.compile:
        cmd.append("--compile")
    timeout = deadline - time.monotonic()
    report.say(f"compile: {' '.join(cmd[1:])} (timeout {timeout:.0f} s)")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    t = time.monotonic()
    with open(report.log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                start_new_session=True)
        try:
            stdout, _ = proc.communicate(timeout=max(timeout, 1.0))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        log.write(stdout)
    wall = time.monotonic() - t
    if timed_out or proc.returncode != 0:
        return {"status": "failed", "command": cmd[1:], "timed_out": timed_out, "returncode": proc.returncode,
                "seconds_with_start_up": wall, "tail": stdout[-2000:]}
    last = json.loads([line for line in stdout.splitlines() if line.strip()][-1])
    row = last["cases"][0]
    eager = next((r for r in ctx.rows if r["optimizer"] == "sgd" and r["batch_size"] == plan.compile_batch), None)
    out = {"status": "ok", "compiled": plan.compile, "command": cmd[1:], "img_s": row["real_img_s"],
           "step_ms": row["real_step_ms"], "peak_mem_bytes": row["peak_mem_bytes_real"],
           "eager_img_s": None if eager is None else eager["real_img_s"],
           "speedup_over_eager": None if eager is None else row["real_img_s"] / eager["real_img_s"],
           "seconds_with_start_up": wall}
    report.say(f"compile ({'compiled' if plan.compile else 'not compiled'}): {out['img_s']:,.0f} img/s"
               + (f", x{out['speedup_over_eager']:.2f} eager" if eager else "") + f"; {wall:.0f} s with start-up")
    return out


# ----------------------------------------------------------------------------------------------
# The summary (the last line).


def headline(ctx: Context, device_name: str, device_type: str) -> dict:
    plan, secs = ctx.plan, ctx.report.data["sections"]
    rows = ctx.rows
    tf = tt.target_figures(rows, (secs.get("split") or {}).get("split_s"))
    fig: dict[str, Any] = {
        f"sgd_b{tt.TARGET_SGD_BATCH}_img_s": tf["sgd_img_s_at_target_batch"],
        "sam_over_sgd": tf["sam_over_sgd"],
        "min_sam_over_sgd": tf["min_sam_over_sgd"],
        f"real_over_plain_sgd_b{tt.TARGET_RATIO_BATCH}": tf["sgd_ratio_at_target_batch"],
        "real_over_plain": {f"{r['optimizer']}_b{r['batch_size']}": r["ratio"] for r in rows},
        "img_s": {f"{r['optimizer']}_b{r['batch_size']}": r["real_img_s"] for r in rows},
        f"split_over_{tt.BUDGET_EPOCHS}_epochs": tf["split_over_budget"],
        "split_over_sgd_epoch": {bs: f["split_over_epoch"]
                                 for bs, f in ((secs.get("split") or {}).get("by_batch") or {}).items()},
    }
    sims = (secs.get("sims") or {}).get("cases") or []
    fig["sims_over_numba_sequential"] = {f"{c['rule']}_{c['dtype']}": c["speedup_over_numba_sequential"] for c in sims}
    fig["sims_over_numba_all_cores"] = {f"{c['rule']}_{c['dtype']}": c["speedup_over_numba_all_cores"] for c in sims}
    fig["min_sims_over_numba_sequential"] = min(fig["sims_over_numba_sequential"].values(), default=None)
    models = (secs.get("throughput") or {}).get("models") or []
    fig["models_sgd_img_s"] = {m["model"]: m["img_s"] for m in models}
    fig["models_peak_gib"] = {m["model"]: None if m["peak_mem_bytes"] is None else m["peak_mem_bytes"] / 2**30
                              for m in models}
    comp = secs.get("compile") or {}
    fig["compile_speedup"] = comp.get("speedup_over_eager") if comp.get("compiled") else None

    targets = {
        f"sgd_b{tt.TARGET_SGD_BATCH}_img_s": tt.TARGETS["sgd_img_s_at_target_batch"],
        "min_sam_over_sgd": tt.TARGETS["min_sam_over_sgd"],
        f"real_over_plain_sgd_b{tt.TARGET_RATIO_BATCH}": tt.TARGETS["sgd_ratio_at_target_batch"],
        f"split_over_{tt.BUDGET_EPOCHS}_epochs": tt.TARGETS["split_over_budget"],
        "min_sims_over_numba_sequential": (">=", SIMS_TARGET, f"sims sweep >= {SIMS_TARGET:g}x numba one run after another"),
    }
    bf16, _ = run_defaults(torch.device(device_type))
    why = tt.targets_not_applicable(device_type=device_type, smoke=plan.mode != "gpu", model=plan.model, bf16=bf16)
    met = tt.check_targets(fig, targets, device_name=device_name, not_applicable=why)
    corr = secs.get("correctness") or {}
    statuses = {name: (secs.get(name) or {}).get("status", "not run") for name in SECTIONS}
    return {
        "bench": "gpu", "mode": plan.mode, "device": device_name, "device_type": device_type,
        "torch": torch.__version__, "date_utc": ctx.report.data.get("machine", {}).get("date_utc"),
        "seconds": round(ctx.report.data.get("seconds", 0.0), 1),
        "ok": not any(s in ("failed", "error") for s in statuses.values()),
        "sections": statuses,
        "errors": {name: (secs.get(name) or {}).get("error") for name in SECTIONS if (secs.get(name) or {}).get("error")},
        "pytest": {**(corr.get("counts") or {}), "failed_tests": [f["test"] for f in corr.get("failures", [])]},
        "model": plan.model,
        "figures": fig,
        "targets": {k: f"{op} {v:g}" for k, (op, v, _) in targets.items()},
        "targets_met": met,
    }


# ----------------------------------------------------------------------------------------------
# main


SECTION_FUNCTIONS: dict[str, Callable[[Context, float], dict]] = {
    "correctness": section_correctness, "throughput": section_throughput, "split": section_split,
    "sims": section_sims, "compile": section_compile,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu.json, gpu.log and the pytest reports")
    parser.add_argument("--smoke", action="store_true", help="every section on the CPU with tiny sizes (CI)")
    parser.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)  # GPU plan, CPU, 1-2 steps
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole command (default 285 on a GPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in the fixed order")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    args = parser.parse_args(argv)

    def refuse(message: str, code: int) -> int:
        print(f"error: {message}", file=sys.stderr)
        print(json.dumps({"bench": "gpu", "ok": False, "error": message}))
        return code

    if args.smoke and args.cpu_dry_run:
        return refuse("--smoke and --cpu-dry-run: give one", 2)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    if not wanted or any(s not in SECTIONS for s in wanted):
        return refuse(f"--sections: got {args.sections!r}, expected names among {', '.join(SECTIONS)}", 2)
    if args.budget is not None and not (args.budget > 0):
        return refuse(f"--budget: got {args.budget}, expected seconds > 0", 2)
    out = Path(args.out)
    present = [name for name in FILES if (out / name).exists()]
    if present and not args.overwrite:
        return refuse(f"--out: {out} already holds {', '.join(present)}; pass --overwrite to replace them", 2)
    mode = "smoke" if args.smoke else ("cpu-dry-run" if args.cpu_dry_run else "gpu")
    if mode == "gpu" and not torch.cuda.is_available():
        return refuse("no CUDA device: bench/gpu.py measures a GPU (use --smoke on a CPU)", 1)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in present:
            (out / name).unlink()
    except OSError as err:
        return refuse(f"--out: {short_error(err)}", 1)

    plan = make_plan(mode, os.cpu_count() or 1)
    if args.budget is not None:
        plan = Plan(**{**asdict(plan), "budget_s": args.budget})
    report = Report(out, plan)
    clock = Clock(plan.budget_s)
    device = torch.device(plan.device)
    ctx = Context(plan=plan, report=report)
    report.data["machine"] = machine(plan, device)
    m = report.data["machine"]
    device_name = m.get("gpu") or m["cpu"]
    report.say(f"bench/gpu.py {mode} on {device_name}: torch {torch.__version__}, {m['cpus']} CPUs, "
               f"budget {plan.budget_s:.0f} s, sections {', '.join(wanted)}")
    report.save()

    order = [s for s in SECTIONS if s in wanted]
    for i, name in enumerate(order):
        later = [s for s in order[i + 1:] if s != "compile"]
        reserve = sum(plan.budgets[s] for s in later)
        budget = plan.budgets[name]
        entry: dict[str, Any] = {"status": "running", "budget_s": budget}
        report.data["sections"][name] = entry
        if name == "compile":
            deadline = clock.start + plan.budget_s
            if clock.remaining() < budget:
                entry.update(status="skipped", reason=f"{clock.remaining():.0f} s left, under the {budget:.0f} s "
                                                      "it needs (torch.compile of ResNet18 forward and backward)")
                report.say(f"compile: skipped ({entry['reason']})")
                report.save()
                continue
        else:
            deadline = clock.deadline(budget, reserve)
        report.say(f"== {name} (budget {budget:.0f} s, {deadline - time.monotonic():.0f} s until its deadline)")
        t = time.monotonic()
        try:
            entry.update(SECTION_FUNCTIONS[name](ctx, deadline))
        except Exception as err:
            entry.update(status="error", error=short_error(err), traceback=traceback.format_exc()[-4000:])
            report.say(f"{name}: ERROR {short_error(err)}")
        finally:
            entry["seconds"] = time.monotonic() - t
            release_memory(ctx.info.device if ctx.info else None)
            report.data["seconds"] = clock.elapsed()
            report.save()
    report.data["seconds"] = clock.elapsed()
    summary = headline(ctx, device_name, device.type)
    report.data["summary"] = summary
    report.save()
    report.say(f"done in {clock.elapsed():.0f} s; gpu.json and gpu.log in {out}")
    print(to_json(summary, indent=None), flush=True)
    bad = [s for s, st in summary["sections"].items() if st in ("failed", "error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
