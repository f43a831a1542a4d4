"""--tensorboard (real/tensorboard.py): the event files hold metrics.jsonl's numbers and the split's,
at steps that are a function of (phase, epoch); a run killed between an epoch's event write and its
checkpoint, and resumed, shows every step once with the values of an uninterrupted run; without
tensorboard installed the flag is refused.  CPU, synthetic data, cnn-small, tiny sizes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, env, flags
from tensorboard.backend.event_processing.event_accumulator import (
    SCALARS,
    EventAccumulator,
)
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from real import rundir
from real.config import TrainConfig
from real.rundir import load_run_config, read_metrics, read_partition
from real.train import train
from theory.plumbing.config import ConfigError

RUN = dict(dataset="synthetic", model="cnn-small", synthetic_train=128, synthetic_test=64, batch_size=32, epochs=3,
           useful=True, separate_epoch=2, deterministic=True, tensorboard=True)
TIMING = ("train/images_per_second", "separate/train/images_per_second")  # the only tags that are not deterministic


def board(out: Path) -> Path:
    return out / "tensorboard"


def reader_view(out: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar as TensorBoard's reader shows it: tag -> [(step, value)] in file order."""
    acc = EventAccumulator(str(board(out)), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


def raw_events(out: Path) -> list[tuple[int, object]]:
    """(file number, Event) of every event in every file, in TensorBoard's file order, as written."""
    files = sorted(p for p in board(out).iterdir() if "tfevents" in p.name)
    return [(i, Event.FromString(raw)) for i, f in enumerate(files) for raw in RawEventFileLoader(str(f)).Load()]


def preempting_view(out: Path) -> dict[str, list[tuple[int, float]]]:
    """The raw events read with the data server's rule (tensorboard/data/server/reservoir.rs): a value at
    step s replaces the series' values at steps >= s."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for _, e in raw_events(out):
        for v in e.summary.value:
            series[v.tag] = [(s, x) for s, x in series[v.tag] if s < e.step] + [(e.step, v.simple_value)]
    return dict(series)


def f32(x: float) -> float:
    return float(np.float32(x))


def expected_view(out: Path, epochs: int) -> dict[str, list[tuple[int, float]]]:
    """The documented tags, from metrics.jsonl and partition.npz: main epoch e at step e, pre-split epoch e
    at e - epochs - 1 (tags prefixed separate/), the split at step 0."""
    view: dict[str, list[tuple[int, float]]] = defaultdict(list)
    names = {"train_loss": "train/loss", "train_acc": "train/accuracy", "test_loss": "test/loss",
             "test_acc": "test/accuracy", "lr": "train/lr", "images_per_second": "train/images_per_second"}
    for row in read_metrics(out):
        main = row["phase"] == "main"
        step = row["epoch"] if main else row["epoch"] - epochs - 1
        for key, tag in names.items():
            view[tag if main else "separate/" + tag].append((step, f32(row[key])))
        view["phase"].append((step, 1.0 if main else 0.0))
    if (out / "partition.npz").exists():
        part = read_partition(out)
        up, losses = part["upsample"], part["losses"].astype(np.float64)
        view["split/upsampled"].append((0, f32(up.sum())))
        view["split/upsampled_fraction"].append((0, f32(up.mean())))
        view["split/mean_loss_upsampled"].append((0, f32(losses[up].mean())))
        view["split/mean_loss_rest"].append((0, f32(losses[~up].mean())))
        for c, (size, n_up) in enumerate(zip(part["class_sizes"], part["upsampled_per_class"])):
            view[f"split/class_{c}/size_upsampled"].append((0, f32(n_up)))
            view[f"split/class_{c}/size_rest"].append((0, f32(size - n_up)))
            for side in ("upsampled", "rest"):
                if np.isfinite(part[f"mean_loss_{side}"][c]):
                    view[f"split/class_{c}/mean_loss_{side}"].append((0, f32(part[f"mean_loss_{side}"][c])))
    return dict(view)


def without_timing(view: dict) -> dict:
    return {tag: values for tag, values in view.items() if tag not in TIMING}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run with --tensorboard (in this process)."""
    out = tmp_path_factory.mktemp("tb") / "ref"
    assert train(TrainConfig(**RUN, out=str(out)))["status"] == "completed"
    return out


def test_event_files_hold_metrics_and_split(reference):
    view = reader_view(reference)
    assert view == expected_view(reference, RUN["epochs"])
    steps = [s for s, _ in view["phase"]]
    assert steps == [-3, -2, 1, 2, 3] and [v for _, v in view["phase"]] == [0, 0, 1, 1, 1]
    assert [s for s, _ in view["train/loss"]] == [1, 2, 3]  # main epochs at their epoch: a baseline run lines up
    assert view["split/upsampled"] == [(0, f32(read_partition(reference)["indices"].size))]
    # One file, every (tag, step) written once, steps in increasing order.
    events = raw_events(reference)
    assert {i for i, _ in events} == {0}
    written = [(v.tag, e.step) for _, e in events for v in e.summary.value]
    assert len(written) == len(set(written)) == sum(len(v) for v in view.values())
    order = [e.step for _, e in events if e.summary.value]
    assert order == sorted(order)


# ----------------------------------------------------------------------------------------------
# Kills between an epoch's event write and its checkpoint.

KILL_IN_SAVE = """
import os, signal, sys
from real import rundir
from real.cli import main
phase, epoch = sys.argv[1], int(sys.argv[2])
save = rundir.Run.save
def killing_save(self, ph):
    if (ph.name, ph.epoch) == (phase, epoch):  # the epoch's events are written, its checkpoint not
        os.kill(os.getpid(), signal.SIGKILL)
    save(self, ph)
rundir.Run.save = killing_save
sys.exit(main(sys.argv[3:]))
"""


def killed_in_save(phase: str, epoch: int, args: list[str]) -> None:
    res = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, phase, str(epoch), *args], env=env(), cwd=REPO,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == -signal.SIGKILL, res.stderr


def test_sigkill_after_event_write_then_resume_shows_each_step_once(tmp_path, reference):
    out = tmp_path / "killed"
    args = ["run", *flags(**RUN), "--out", str(out)]
    # SIGKILL right after the event write of: the last pre-split epoch (step -2), the split (step 0,
    # with partition.npz written but not the main phase's first checkpoint), main epoch 2 (step 2).
    killed_in_save("separate", 2, args)
    killed_in_save("main", 0, args + ["--resume"])
    killed_in_save("main", 2, args + ["--resume"])
    # Each kill left one step on disk past the checkpoint; every resumed session wrote its checkpointed
    # record again (step -2 once its checkpoint held it), then went on from there.
    events = raw_events(out)
    written = defaultdict(list)
    for i, e in events:
        for v in e.summary.value:
            written[v.tag].append((i, e.step))
    assert [i for i, s in written["separate/train/loss"] if s == -3] == [0, 1, 2]
    assert [i for i, s in written["separate/train/loss"] if s == -2] == [0, 1, 2]
    assert [i for i, s in written["split/upsampled"]] == [1, 2]
    assert [i for i, s in written["train/loss"] if s == 2] == [2]
    assert not (out / "summary.json").exists()
    # The last session, in this process, finishes the run.
    assert train(TrainConfig(**RUN, out=str(out), resume=True))["status"] == "completed"
    events = raw_events(out)
    assert [i for i, s in [(i, e.step) for i, e in events for v in e.summary.value if v.tag == "train/loss"]
            if s == 2] == [2, 3]
    # Every session's file opened with TensorBoard's purge marker at the first step a run can write.
    starts = [(i, e.step) for i, e in events if e.HasField("session_log") and e.session_log.status == SessionLog.START]
    assert starts == [(0, -4), (1, -4), (2, -4), (3, -4)]
    assert [i for i, s in written["split/upsampled"]] + [3] == [i for i, e in events for v in e.summary.value
                                                               if v.tag == "split/upsampled"]
    # What TensorBoard shows: every step once, metrics.jsonl's values, those of the uninterrupted run.
    view = reader_view(out)
    assert all(len({s for s, _ in v}) == len(v) for v in view.values())
    assert view == expected_view(out, RUN["epochs"])
    assert without_timing(view) == without_timing(reader_view(reference))
    assert {t: [s for s, _ in v] for t, v in view.items()} == {t: [s for s, _ in v] for t, v in reader_view(reference).items()}
    # The data server's rule (a rewritten step replaces the old one) gives the same picture.
    assert preempting_view(out) == view


class Stop(Exception):
    pass


def stop_in_save(monkeypatch, phase: str, epoch: int) -> None:
    save = rundir.Run.save

    def stopping_save(self, ph):
        if (ph.name, ph.epoch) == (phase, epoch):
            raise Stop
        save(self, ph)

    monkeypatch.setattr(rundir.Run, "save", stopping_save)


def test_tensorboard_switched_on_at_resume_fills_in_the_record(tmp_path, reference, monkeypatch):
    out = tmp_path / "switched"
    cfg = TrainConfig(**RUN, out=str(out))
    stop_in_save(monkeypatch, "main", 2)  # events up to main epoch 2, checkpoint of main epoch 1
    with pytest.raises(Stop):
        train(cfg)
    stop_in_save(monkeypatch, "main", 3)  # without --tensorboard: main epoch 2 checkpointed, no event
    with pytest.raises(Stop):
        train(TrainConfig(**{**RUN, "tensorboard": False}, out=str(out), resume=True))
    monkeypatch.undo()
    assert max(s for s, _ in reader_view(out)["train/loss"]) == 2  # the orphan of the first stop
    assert train(TrainConfig(**RUN, out=str(out), resume=True))["status"] == "completed"
    view = reader_view(out)
    assert view == expected_view(out, RUN["epochs"])
    assert without_timing(view) == without_timing(reader_view(reference))
    assert preempting_view(out) == view
    # --overwrite removes the event files with the other run files; a run without the flag writes none.
    assert train(TrainConfig(**{**RUN, "tensorboard": False}, out=str(out), overwrite=True))["status"] == "completed"
    assert not any("tfevents" in p.name for p in board(out).iterdir())


def test_foreign_event_files_are_not_touched(tmp_path):
    out = tmp_path / "theirs"
    (out / "tensorboard").mkdir(parents=True)
    theirs = out / "tensorboard" / "events.out.tfevents.1.host.1.0"
    theirs.write_bytes(b"not ours")
    with pytest.raises(ConfigError, match="--out"):
        train(TrainConfig(**RUN, out=str(out), overwrite=True))
    assert theirs.read_bytes() == b"not ours"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_only_rank_0_writes(tmp_path):
    out = tmp_path / "ddp"
    kw = {**RUN, "epochs": 1, "separate_epoch": 1, "deterministic": False}
    res = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "real", "run", *flags(**kw),
                          "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=180,
                         env=env(), cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len({i for i, _ in raw_events(out)}) == 1  # one writer: one event file
    assert reader_view(out) == expected_view(out, kw["epochs"])


# ----------------------------------------------------------------------------------------------
# Without tensorboard.

BLOCKED = "import sys; sys.modules['tensorboard'] = None; from real.cli import main; sys.exit(main(sys.argv[1:]))"


def test_refused_without_tensorboard_installed(tmp_path, monkeypatch):
    out = tmp_path / "o"
    res = subprocess.run([sys.executable, "-c", BLOCKED, "run", *flags(**RUN), "--out", str(out)], env=env(),
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    line = res.stderr.strip()
    assert res.returncode == 2 and len(line.splitlines()) == 1, res.stderr
    assert line.startswith("error: --tensorboard:") and "pip install 'useful-sb[tensorboard]'" in line
    assert not out.exists()  # refused before anything is written
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match="--tensorboard"):
        TrainConfig(tensorboard=True)
    TrainConfig(tensorboard=False)  # the default needs nothing


def test_reading_a_run_needs_no_tensorboard(reference, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = load_run_config(reference)  # e.g. useful-train sharpness on a machine without tensorboard
    assert cfg.tensorboard is False and cfg.epochs == RUN["epochs"]
