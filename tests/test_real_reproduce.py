"""real/reproduce.py and its plan, claims and figures: ``useful-train reproduce`` on small generated
idx files (the Fashion-MNIST format): the plan's keys and the refusal of a cached run of another
configuration, each claim function on constructed runs (a case that holds and one that fails), the
t-SNE figure, the claims.json schema, real run directories that compare reads, --overwrite /
--resume, determinism, every flag's help, bad input and the missing data set (one line, exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

import real.datasets
from real.cli import main
from real.compare import compare, paired_difference
from real import reproduce_claims as rc
from theory.plumbing.config import to_jsonable
from real.reproduce import (
    FIGURES,
    REQUIRED_IDS,
    ReproduceSettings,
    add_arguments,
    check_cached,
    early_gap,
    fit_iteration,
    merge_short_windows,
    plan,
    run_digest,
    split_quality,
)
from real.reproduce_figures import draw_tsne
from real.reproduce_plan import FULL_FIELDS, RunResult
from real.rundir import CONFIG, FORMAT, load_run_config
from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import ConfigError

TINY = dict(seeds=2, train_subset=100, epochs=2, batch_size=20, separate_iteration=3, group_window=1,
            early_iterations=4, contrast_grid="0.25,1", workers=1)
TINY_SETTINGS = {**TINY, "contrast_grid": (0.25, 1.0)}


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">IIII", 2051, n, 28, 28) + images.astype(np.uint8).tobytes()))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """150 training and 100 test images: a class-dependent bright bar in the middle plus noise, on
    a black border (like Fashion-MNIST's clothing)."""
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 150), ("t10k", 100)):
        labels = np.arange(n) % 10
        images = np.zeros((n, 28, 28))
        for i, y in enumerate(labels):
            images[i, 6:22, 6:22] = rng.normal(60, 30, size=(16, 16))
            images[i, 6 + y:8 + y, 6:22] += 120
        write_idx(folder, prefix, np.clip(images, 0, 255).round(), labels)
    return folder


def flags(**kw) -> list[str]:
    return [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exit_:  # a usage error from argparse
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ----------------------------------------------------------------------------------------------
# The numbers behind the claims.


def test_fit_iteration_gap_and_split_quality():
    groups = {"start": np.array([0, 5, 10, 15]), "end": np.array([5, 10, 15, 20]),
              "accuracy": np.array([[0.1, 0.5], [0.2, 0.95], [0.5, 0.99], [np.nan, 1.0]])}
    assert fit_iteration(groups, 1, 0.9) == 10 and fit_iteration(groups, 0, 0.9) is None
    assert fit_iteration(groups, 0, 0.5) == 15
    assert early_gap(groups, 10) == pytest.approx(((0.5 - 0.1) + (0.95 - 0.2)) / 2)
    # Windows of unequal length weigh by their iterations; a short window at an epoch's end is merged.
    raw = {"window": np.int64(4), "epoch": np.array([1, 1, 2]), "start": np.array([0, 4, 5]),
           "end": np.array([4, 5, 9]), "seen": np.array([[2, 6], [1, 1], [4, 4]]),
           "correct": np.array([[1, 6], [0, 1], [2, 4]])}
    merged = merge_short_windows(raw)
    assert merged["end"].tolist() == [5, 9] and merged["seen"].tolist() == [[3, 7], [4, 4]]
    assert merged["accuracy"][0].tolist() == pytest.approx([1 / 3, 1.0])
    assert early_gap(merged, 9) == pytest.approx((5 * (1 - 1 / 3) + 4 * 0.5) / 9)
    up = np.array([1, 1, 1, 0, 0, 0], bool)
    has = np.array([0, 0, 1, 1, 1, 0], bool)  # without: examples 0, 1, 5
    assert split_quality(up, has) == pytest.approx((2 / 3, 2 / 3))


def test_paired_difference_is_the_t_interval():
    a, b = [0.71, 0.69, 0.74, 0.70], [0.68, 0.69, 0.70, 0.66]
    d = np.subtract(a, b)
    out = paired_difference(a, b)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / math.sqrt(4)
    assert out["mean"] == pytest.approx(d.mean()) and out["n"] == 4
    assert (out["low"], out["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    lo, hi = stats.t.interval(0.95, 3, loc=d.mean(), scale=stats.sem(d))
    assert (out["low"], out["high"]) == pytest.approx((lo, hi))
    one = paired_difference([0.5], [0.4])
    assert one["mean"] == pytest.approx(0.1) and one["low"] is None and one["std"] is None


def test_plan_keys_runs_by_their_full_configuration(tmp_path):
    s = ReproduceSettings(**{**TINY, "contrast_grid": (0.25, 1.0)})
    jobs = plan(s, tmp_path)
    # main contrast (4), the other contrast (SGD recording its split), plain (3), the other two split inputs
    assert len(jobs) == 2 * (4 + 1 + 3 + 2)
    assert len({j.config.out for j in jobs}) == len({j.key for j in jobs}) == len(jobs)
    for j in jobs:
        assert Path(j.config.out).name == f"{j.data}-{j.method}-seed{j.seed}-{run_digest(j.config)[:10]}"
        assert j.config.deterministic and j.config.augment == "none"
    other = plan(ReproduceSettings(**{**TINY, "contrast_grid": (0.25, 1.0), "epochs": 3}), tmp_path)
    assert not {j.config.out for j in jobs} & {j.config.out for j in other}  # another budget: other runs
    by = {(j.data, j.method): j.config for j in jobs if j.seed == 0}
    assert all(c.separate_iteration == 3 and c.useful for (_, m), c in by.items() if m in ("useful", "random"))
    assert by[("c0.25", "split_softmax")].split_on == "softmax" and by[("c0.25", "split_loss")].split_on == "loss"
    assert by[("c0.25", "split_loss")].upsample_factor == 1 and by[("c0.25", "useful")].split_on == "logits"
    # --full adds SAM at each further radius and the long-budget arm on the unmodified images.
    full = {(j.data, j.method): j.config for j in plan(ReproduceSettings(**{**TINY_SETTINGS, **FULL_FIELDS}), tmp_path)
            if j.seed == 0}
    assert [full[("c0.25", f"sam_rho{r:g}")].rho for r in (0.1, 0.2, 0.5, 1.0)] == [0.1, 0.2, 0.5, 1.0]
    long = full[("long", "useful")]
    assert (long.epochs, long.train_subset, long.separate_epoch, long.easy_feature) == (60, 1000, 6, "none")
    assert full[("long", "random")].partition == "random" and full[("long", "sgd")].optimizer == "sgd"


def test_a_cached_run_is_reused_only_for_its_configuration(tmp_path):
    job = next(j for j in plan(ReproduceSettings(**TINY_SETTINGS), tmp_path) if j.method == "useful")
    folder = Path(job.config.out)
    folder.mkdir(parents=True)
    assert check_cached(job) is False  # nothing there
    (folder / CONFIG).write_text(json.dumps({**to_jsonable(job.config), "format": FORMAT}))
    assert check_cached(job) is False  # its configuration, but not completed: it resumes
    (folder / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert check_cached(job) is True
    other = dataclasses.replace(job.config, upsample_factor=3)  # another configuration in the same folder
    (folder / CONFIG).write_text(json.dumps({**to_jsonable(other), "format": FORMAT}))
    with pytest.raises(ConfigError, match="^--resume: .*upsample_factor: 3, the plan asks for 2"):
        check_cached(job)
    moved = dataclasses.replace(job.config, device="cuda", eval_batch_size=64)  # how it runs, not what it computes
    (folder / CONFIG).write_text(json.dumps({**to_jsonable(moved), "format": FORMAT}))
    assert check_cached(job) is True


def test_sgd_with_its_split_recorded_is_sgd(tmp_path):
    """The sweep's "sgd_split" runs (USEFUL with k = 1) train their main phase exactly as SGD does."""
    import torch

    from real.config import TrainConfig
    from real.rundir import load_checkpoint, read_metrics
    from real.train import train

    kw = dict(dataset="synthetic", model="cnn-small", synthetic_train=96, synthetic_test=32, batch_size=32, epochs=2,
              augment="none", easy_feature="patch", deterministic=True)
    train(TrainConfig(**kw, out=str(tmp_path / "sgd")))
    train(TrainConfig(**kw, useful=True, upsample_factor=1, separate_iteration=2, out=str(tmp_path / "k1")))
    a, b = load_checkpoint(tmp_path / "sgd")["model"], load_checkpoint(tmp_path / "k1")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[{k: r[k] for k in ("train_loss", "test_acc", "test_acc_without_easy")} for r in read_metrics(tmp_path / x)
             if r["phase"] == "main"] for x in ("sgd", "k1")]
    assert rows[0] == rows[1]


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="^--contrast:"):
        ReproduceSettings(contrast=0.3)  # not in the grid
    with pytest.raises(ConfigError, match="^--contrast-grid"):
        ReproduceSettings(contrast_grid=(1.0, 0.25))
    with pytest.raises(ConfigError, match="^--separate-iteration"):
        ReproduceSettings(separate_iteration=10**6)
    with pytest.raises(ConfigError, match="^--easy-fraction"):
        ReproduceSettings(easy_fraction=1.0)  # no examples without the feature
    with pytest.raises(ConfigError, match="^--split-on"):
        ReproduceSettings(split_on="loss", split_inputs=("logits", "softmax"))
    with pytest.raises(ConfigError, match="^--split-inputs"):
        ReproduceSettings(split_inputs=("logits", "probits"))
    with pytest.raises(ConfigError, match="^--rho-grid"):
        ReproduceSettings(rho_grid=(0.1, -1.0))
    with pytest.raises(ConfigError, match="^--long-separate-epoch"):
        ReproduceSettings(long_epochs=4, long_separate_epoch=4)
    assert ReproduceSettings(rho_grid=(1.0, 0.05, 0.2)).rhos == (0.05, 0.2, 1.0)


# ----------------------------------------------------------------------------------------------
# Each claim on constructed runs: one case that holds, one that fails.

N, SEEDS = 200, 3
HAS = np.arange(N) % 10 != 0  # every tenth example lacks the square: 20 of them
LABELS = np.arange(N) // 20 % 10
S = ReproduceSettings(seeds=SEEDS, rho_grid=(0.5,), long_epochs=10, long_separate_epoch=2)


def curves(with_easy, without):
    """group accuracy: windows of 10 iterations up to 200 (column 0: without the square, 1: with it)."""
    end = np.arange(10, 210, 10)
    return {"start": end - 10, "end": end, "accuracy": np.stack([np.broadcast_to(without, end.shape),
                                                                 np.broadcast_to(with_easy, end.shape)], 1)}


def fake(groups=None, up=None, split_on=None, **final):
    row = {"phase": "main", "test_acc": 0.8, "test_acc_without_easy": 0.7, "test_acc_with_easy": 0.9,
           "train_acc": 0.97, **final}
    partition = None if up is None else {"upsample": np.asarray(up, bool), **({"split_on": np.array(split_on)}
                                                                             if split_on else {})}
    return RunResult(job=None, summary={}, metrics=[{"phase": "separate"}, row], groups=groups,
                     easy={"has_easy_train": HAS}, partition=partition, labels=LABELS)


RAMP = np.linspace(0.1, 0.8, 20)  # never reaches the fit threshold 0.9
FAST = np.r_[0.5, np.full(19, 0.99)]  # fit at iteration 20
EXACT, MIXED = ~HAS, ~HAS | (np.arange(N) < 60)  # the examples without the square; and 40 with it


def results(**over):
    """Every (data, method) of S for 3 seeds; ``over`` replaces one entry (a function of the seed)."""
    base = {("c0.25", m): (lambda i: fake(curves(FAST, RAMP), up=EXACT, split_on="logits"))
            for m in ("sgd", "sam", "useful", "random")}
    base.update({(d, "sgd_split"): (lambda i, p=p: fake(curves(FAST, RAMP), up=p, test_acc_without_easy=a))
                 for d, p, a in (("c0.5", MIXED, 0.72), ("c1", ~HAS | (np.arange(N) < 120), 0.75))})
    base.update({("plain", m): (lambda i: fake(up=EXACT)) for m in ("sgd", "useful", "random")})
    base.update({("long", m): (lambda i: fake(up=EXACT, train_acc=0.995)) for m in ("sgd", "useful", "random")})
    base[("c0.25", "split_softmax")] = lambda i: fake(up=MIXED, split_on="softmax")
    base[("c0.25", "split_loss")] = lambda i: fake(up=MIXED, split_on="loss")
    base[("c0.25", "sam_rho0.5")] = lambda i: fake(curves(FAST, RAMP))
    base.update({tuple(k.split("/")): v for k, v in over.items()})
    return {(d, m, i): make(i) for (d, m), make in base.items() for i in range(SEEDS)}


def test_claim_easy_first():
    c = rc.claim_easy_first(S, results())
    assert c["holds"] and c["values"]["T_with_easy"]["per_seed"] == [20.0] * 3
    assert c["values"]["without_never_fit_seeds"] == 3
    slow_fit = np.r_[np.full(3, 0.5), np.full(17, 0.95)]  # fit at 40: only twice as late
    c = rc.claim_easy_first(S, results(**{"c0.25/sgd": lambda i: fake(curves(FAST, slow_fit if i == 1 else RAMP))}))
    assert not c["holds"] and "seed(s) [1]" in c["note"]


def test_claim_sam_more_uniform_and_the_rho_sweep():
    c = rc.claim_sam_more_uniform(S, results())  # SAM's curves are SGD's: not smaller
    assert not c["holds"] and c["note"]
    closer = lambda i: fake(curves(np.full(20, 0.7), RAMP))  # noqa: E731  the gap smaller in every seed
    c = rc.claim_sam_more_uniform(S, results(**{"c0.25/sam": closer}))
    assert c["holds"] and c["values"]["sam_minus_sgd"]["mean"] < 0
    sweep = rc.claim_sam_rho_sweep(S, results(**{"c0.25/sam_rho0.5": closer}))
    assert sweep["holds"] and sweep["values"]["onset_rho"] == 0.5 and sweep["values"]["more_uniform"] == [False, True]
    sweep = rc.claim_sam_rho_sweep(S, results())
    assert not sweep["holds"] and sweep["values"]["onset_rho"] is None and "any radius" in sweep["note"]


def test_claim_early_outputs_separate_and_split_inputs():
    c = rc.claim_early_outputs_separate(S, results())
    assert c["holds"] and c["values"]["precision"]["per_seed"] == [1.0] * 3
    c = rc.claim_early_outputs_separate(S, results(**{"c0.25/useful": lambda i: fake(curves(FAST, RAMP), up=MIXED)}))
    assert not c["holds"] and c["values"]["precision"]["mean"] == pytest.approx(20 / 74)  # 54 with the square
    split = rc.claim_split_inputs(S, results())  # logits exact, softmax and loss mixed
    assert split["holds"] and split["values"]["passing"] == ["logits"]
    assert split["values"]["inputs"]["loss"]["recall"]["per_seed"] == [1.0] * 3
    split = rc.claim_split_inputs(S, results(**{"c0.25/useful": lambda i: fake(curves(FAST, RAMP), up=MIXED)}))
    assert not split["holds"] and "no input meets the rule" in split["note"]
    # A run that should have split on the softmax but records no split input: refused, not judged as logits.
    unrecorded = fake(up=EXACT)
    unrecorded.job = SimpleNamespace(config=SimpleNamespace(split_on="softmax", out="runs/x"))
    with pytest.raises(EnvironmentFailure, match="does not act"):
        rc.claim_split_inputs(S, results(**{"c0.25/split_softmax": lambda i: unrecorded}))


def _acc(key, by_method, **final):
    return {f"{data}/{m}": (lambda i, a=a: fake(curves(FAST, RAMP), up=EXACT, **{key: a[i]}, **final))
            for data, table in by_method.items() for m, a in table.items()}


def test_claim_useful_helps_and_plain():
    sgd, useful = [0.70, 0.72, 0.71], [0.74, 0.755, 0.75]
    helps = _acc("test_acc_without_easy", {"c0.25": {"sgd": sgd, "useful": useful, "random": [0.705, 0.718, 0.716]}})
    c = rc.claim_useful_helps(S, results(**helps))
    assert c["holds"] and c["values"]["useful_minus_random"]["per_seed"] == pytest.approx([0.035, 0.037, 0.034])
    c = rc.claim_useful_helps(S, results(**_acc("test_acc_without_easy", {"c0.25": {"sgd": sgd, "useful": useful,
                                                                                       "random": useful}})))
    assert not c["holds"] and "USEFUL - random +0.00 points" in c["note"]
    plain = _acc("test_acc", {"plain": {"sgd": sgd, "useful": useful, "random": useful}})
    c = rc.claim_useful_plain(S, results(**plain))
    assert not c["holds"] and c["values"]["useful_minus_sgd"]["low"] > 0
    c = rc.claim_useful_plain(S, results(**_acc("test_acc", {"plain": {"sgd": sgd, "useful": useful, "random": sgd}})))
    assert c["holds"]


def test_a_gain_without_spread_or_from_two_seeds_is_no_evidence():
    """Differences that are all equal give a t-interval of zero width, and two seeds give a wide one
    only by luck: neither makes a claim hold (a 2-seed report once 'held' on 3 test images)."""
    assert rc._above_zero({"n": 3, "std": 0.004, "low": 0.01, "high": 0.05})
    assert not rc._above_zero({"n": 3, "std": 0.0, "low": 0.03, "high": 0.03})
    assert not rc._above_zero({"n": 2, "std": 0.004, "low": 0.01, "high": 0.05})
    sgd, useful = [0.70, 0.72, 0.71], [0.74, 0.755, 0.75]
    same_gain = _acc("test_acc", {"plain": {"sgd": sgd, "useful": useful, "random": [u - 0.015 for u in useful]}})
    c = rc.claim_useful_plain(S, results(**same_gain))
    assert not c["holds"] and c["values"]["useful_minus_random"]["std"] == pytest.approx(0.0, abs=1e-12)


def test_claim_contrast_sweep():
    c = rc.claim_contrast_sweep(S, results())  # accuracy 0.70, 0.72, 0.75; precision 1, 20/74, 20/128
    assert c["holds"] and c["values"]["accuracy_rises"] and c["values"]["precision_falls"]
    drop = {"c1/sgd_split": lambda i: fake(curves(FAST, RAMP), up=~HAS, test_acc_without_easy=0.69)}
    c = rc.claim_contrast_sweep(S, results(**drop))
    assert not c["holds"] and "does not rise" in c["note"] and "does not fall" in c["note"]


def test_claim_long_budget_says_whether_the_regime_was_reached():
    sgd, useful = [0.80, 0.82, 0.81], [0.83, 0.845, 0.84]
    table = {"sgd": sgd, "useful": useful, "random": [0.805, 0.822, 0.814]}
    c = rc.claim_long_budget(S, results(**_acc("test_acc", {"long": table}, train_acc=0.995)))
    assert c["holds"] and c["values"]["regime_reached"]
    short = {f"long/{m}": (lambda i, a=a: fake(up=EXACT, test_acc=a[i], train_acc=0.95)) for m, a in table.items()}
    c = rc.claim_long_budget(S, results(**short))
    assert not c["holds"] and not c["values"]["regime_reached"] and "the regime was not reached" in c["note"]
    assert c["values"]["useful_minus_random"]["low"] > 0  # USEFUL is better, but not in the regime the claim names


def test_judge_runs_the_sweeps_only_with_their_arms():
    report = rc.judge(S, results())
    assert [c["id"] for c in report["claims"]] == list(REQUIRED_IDS + rc.FULL_IDS)
    assert [c["id"] for c in rc.judge(ReproduceSettings(seeds=SEEDS), results())["claims"]] == list(REQUIRED_IDS)


def test_tsne_figure_of_the_split(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(N, 10)) + 4 * (~HAS)[:, None]  # the examples without the square apart
    run = fake(up=EXACT)
    run.partition["logits"] = logits
    path = tmp_path / "tsne.png"
    draw_tsne(path, run, run, iteration=60)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from real.reproduce_figures import tsne_embedding

    a, rows = tsne_embedding(logits, n=50)
    b, _ = tsne_embedding(logits, n=50)
    assert a.shape == (50, 2) and len(set(rows)) == 50 and np.array_equal(a, b)  # fixed random_state


# ----------------------------------------------------------------------------------------------
# The command.


def test_reproduce_end_to_end(idx_dir, tmp_path, capsys):
    out = tmp_path / "report"
    rc, stdout, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), *flags(**TINY))
    assert rc == 0, err
    report = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in report["claims"]] == list(REQUIRED_IDS)
    for c in report["claims"]:
        assert set(c) >= {"id", "statement", "holds", "values", "rule", "figure"}
        assert isinstance(c["holds"], bool) and c["rule"] and c["statement"].endswith(".")
        assert (out / c["figure"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert c["holds"] or c.get("note"), c["id"]  # a claim that does not hold is explained
        assert f"{c['id']} " in stdout
    assert sorted(p.name for p in out.glob("*.png")) == sorted(FIGURES)  # the t-SNE of the split among them
    assert report["figures"]["skipped"] == {} and "real_split_tsne.png" in report["figures"]["drawn"]
    split = report["claims"][REQUIRED_IDS.index("real_split_inputs")]["values"]["inputs"]
    assert list(split) == ["logits", "softmax", "loss"] and len(split["loss"]["precision"]["per_seed"]) == 2
    v = report["claims"][0]["values"]
    assert set(v["T_with_easy"]) == {"mean", "std", "per_seed", "missing"} and len(v["T_with_easy"]["per_seed"]) == 2
    helps = report["claims"][3]["values"]
    assert set(helps["useful_minus_random"]) >= {"mean", "low", "high", "n", "per_seed"}
    assert helps["useful_minus_random"]["n"] == 2
    assert (out / "claims.md").read_text().startswith("| claim | holds |")
    # Every run is a real run directory whose configuration is the one its name's digest says.
    assert len(report["runs"]) == 20
    for rel in report["runs"].values():
        cfg = load_run_config(out / rel)
        assert rel.endswith(run_digest(cfg)[:10]) and cfg.data_dir == str(idx_dir)
    # The numbers come from those runs: the paired difference is recomputed from their summaries.
    acc = {m: [json.loads((out / report["runs"][f"c0.25/{m}/seed{i}"] / "summary.json").read_text())
               ["final_test_acc_without_easy"] for i in range(2)] for m in ("useful", "random")}
    assert helps["useful_minus_random"]["per_seed"] == pytest.approx(np.subtract(acc["useful"], acc["random"]))
    # compare reads them, pairs them by seed and says when fewer than 3 pairs exist.
    table, groups, skipped = compare(sorted(p for m in ("sgd", "sam", "useful", "random")
                                            for p in (out / "runs").glob(f"c0.25-{m}-seed*")))
    assert not skipped and len(groups) == 4
    assert "2 pairs: fewer than 3, no interval" in table

    # A report folder is refused without --overwrite or --resume (one line, exit 2) ...
    rc, _, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), *flags(**TINY))
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    # ... --resume reuses every run (two worker processes, nothing retrained) and a run deleted
    # is retrained to the same numbers (deterministic): the same claims.json but for the seconds.
    before = {k: (out / r / "summary.json").stat().st_mtime_ns for k, r in report["runs"].items()}
    victim = out / report["runs"]["c0.25/useful/seed1"]
    for f in victim.iterdir():
        f.unlink()
    victim.rmdir()
    rc, _, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), "--resume",
                     *flags(**{**TINY, "workers": 2}))
    assert rc == 0, err
    again = json.loads((out / "claims.json").read_text())
    after = {k: (out / r / "summary.json").stat().st_mtime_ns for k, r in again["runs"].items()}
    assert [k for k in before if before[k] != after[k]] == ["c0.25/useful/seed1"]
    for x in (report, again):
        x.pop("seconds")
    assert again == report

    # --overwrite removes the report's files and run directories, nothing of the user's.
    (out / "notes.txt").write_text("mine")
    (out / "runs" / "mine").mkdir()
    rc, _, err = run(capsys, "reproduce", "--out", str(out), "--data-dir", str(idx_dir), "--overwrite",
                     *flags(**{**TINY, "seeds": 1, "contrast_grid": "0.25,0.5"}))
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "mine" and (out / "runs" / "mine").is_dir()
    names = {p.name for p in (out / "runs").iterdir()}
    assert len(names) == 11 and not any(n.startswith("c1-") for n in names)  # no stale run left


def test_missing_data_set_names_the_debian_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(real.datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    rc, _, err = run(capsys, "reproduce", "--out", str(tmp_path / "r"), "--quick")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "dataset-fashion-mnist" in err and err.startswith("error: --data-dir")
    assert not (tmp_path / "r").exists()  # nothing written
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, "reproduce", "--out", str(tmp_path / "r"), "--data-dir", str(empty))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "train-images-idx3-ubyte" in err


def test_bad_settings_are_one_line(tmp_path, capsys):
    for argv, flag in ((["--seeds", "0"], "--seeds"), (["--contrast-grid", "0.5"], "--contrast-grid"),
                       (["--workers", "x"], "--workers"), (["--bogus", "1"], "--bogus"),
                       (["--full", "--long-epochs", "1"], "--long-epochs"), (["--split-inputs", "probits"],
                                                                              "--split-inputs"),
                       (["--rho-grid", "0,1"], "--rho-grid"), (["--overwrite", "--resume"], "--resume")):
        rc, _, err = run(capsys, "reproduce", "--out", str(tmp_path / "r"), *argv)
        assert rc == 2 and flag in err and len(err.strip().splitlines()) == 1


def test_every_flag_has_its_one_line_help(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = [a for a in parser._actions if a.dest != "help"]
    for a in actions:
        assert a.help and "\n" not in a.help and "default" in a.help, a.dest
    assert {f.name for f in dataclasses.fields(ReproduceSettings)} <= {a.dest for a in actions}
    rc_, out, _ = run(capsys, "reproduce", "--help")
    assert rc_ == 0 and "--rho-grid" in out and "--split-inputs" in out and "--full" in out
