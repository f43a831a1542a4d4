"""The trainer's configuration: one frozen dataclass, validated field by field.

Every field is a command-line flag of ``useful-train run`` (the name with dashes, e.g.
``--separate-epoch``), a key of a ``--config`` TOML file and a key of a preset
(``real/presets/NAME.toml``).  Precedence: defaults < preset < TOML file < command line.
Conversion and error reporting are :mod:`theory.plumbing.config`'s, so a bad value reads the same
whatever its source::

    error: --lr: got -1.0, expected a number in (0, inf)

The fully resolved configuration is written to ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from theory.plumbing.config import (
    ConfigError,
    check,
    check_choice,
    check_int,
    check_number,
    load_toml,
    to_jsonable,
)

from .datasets import DATASETS
from .distributed import DEVICES
from .models import MODELS
from .optim import OPTIMIZERS
from .planted import EASY_FEATURES
from .schedules import SCHEDULES

__all__ = [
    "TrainConfig",
    "PARTITIONS",
    "AUGMENTS",
    "PRECISIONS",
    "MEMORY_FORMATS",
    "RUN_CONTROL_FIELDS",
    "preset_names",
    "preset_path",
    "load_preset",
    "describe_preset",
    "config_to_dict",
    "default_out",
]

# One tuple of names per choice (the others live with their builders: DATASETS, MODELS, OPTIMIZERS,
# SCHEDULES, DEVICES); the dataclass's Literal types are built from them.
PARTITIONS = ("useful", "random", "quantile", "misclassified", "jtt")
AUGMENTS = ("crop-flip", "none")
PRECISIONS = ("auto", "bf16", "float32")  # auto: bf16 autocast on CUDA, float32 elsewhere
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # auto: channels_last on CUDA
FLOAT32_MAX = 3.4028234663852886e38  # values that go into float32 tensors must fit

# Fields that say how to run, not what to compute: they may differ between a run and its resume.
RUN_CONTROL_FIELDS = ("out", "resume", "overwrite", "device", "compile", "eval_batch_size", "data_dir", "preset")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (see docs/training.md for every field's meaning).

    Data: ``dataset``, ``data_dir``, ``synthetic_train``/``synthetic_test`` (sizes of the
    ``synthetic`` data set), ``long_tail_ratio`` (``n_max / n_min`` of a long-tailed training split),
    ``label_noise`` (rate of symmetric label noise on the training labels).

    Optimization: ``model``, ``optimizer`` (sgd, sam, asam), ``epochs``, ``batch_size``, ``lr``,
    ``momentum``, ``nesterov``, ``weight_decay``, ``rho`` (SAM/ASAM radius), ``schedule`` with
    ``warmup_epochs``, ``milestones``, ``gamma``, ``label_smoothing``.

    Augmentation: ``augment`` (``crop-flip`` or ``none``), ``trivial_augment``, ``mixup_alpha``
    (0 = off).

    Planted easy feature (real/planted.py): ``train_subset`` / ``test_subset`` (train / evaluate on
    this many examples, drawn per class with the seed), ``contrast`` (pixel values times c: the slow feature's strength),
    ``easy_feature`` (``patch``: a label-placed white square in a fraction ``easy_fraction`` of the
    training and test images, ``easy_size`` pixels a side), ``group_window`` (iterations per row of
    the per-group training accuracy, recorded with the feature).

    USEFUL: ``useful``, ``separate_epoch`` (an epoch or ``"auto"``), ``upsample_factor`` (k),
    ``partition`` (``useful`` or a baseline), ``quantile`` (for the ``quantile`` baseline),
    ``upweight`` (loss weight k instead of k copies).

    Run control: ``seed``, ``deterministic``, ``compile``, ``device``, ``out``, ``resume``,
    ``overwrite``, ``eval_batch_size``, ``preset`` (the preset it was built from, recorded).

    Numerics: ``precision`` (``auto``: bf16 autocast on CUDA, float32 on the CPU), ``memory_format``
    (``auto``: channels_last on CUDA).

    This is the one validator: the builders (optimizer, schedule, phase) trust what it accepted.
    """

    dataset: str = "cifar10"
    data_dir: str | None = None
    model: str = "resnet18"
    optimizer: Literal[OPTIMIZERS] = "sgd"
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    rho: float = 0.05
    schedule: Literal[SCHEDULES] = "cosine"
    warmup_epochs: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.2
    label_smoothing: float = 0.0
    augment: Literal[AUGMENTS] = "crop-flip"
    trivial_augment: bool = False
    mixup_alpha: float = 0.0
    label_noise: float = 0.0
    long_tail_ratio: float | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    contrast: float = 1.0
    easy_feature: Literal[EASY_FEATURES] = "none"
    easy_fraction: float = 0.9
    easy_size: int = 4
    group_window: int = 10
    useful: bool = False
    separate_epoch: int | Literal["auto"] = "auto"
    separate_iteration: int | None = None
    upsample_factor: int = 2
    partition: Literal[PARTITIONS] = "useful"
    quantile: float = 0.5
    upweight: bool = False
    seed: int = 0
    deterministic: bool = False
    compile: bool = False
    device: Literal[DEVICES] = "auto"
    precision: Literal[PRECISIONS] = "auto"
    memory_format: Literal[MEMORY_FORMATS] = "auto"
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    synthetic_train: int = 512
    synthetic_test: int = 256
    eval_batch_size: int = 1024
    preset: str | None = None

    def __post_init__(self) -> None:
        # Data.
        check_choice("--dataset", self.dataset, DATASETS)
        if self.data_dir is not None:
            check(isinstance(self.data_dir, str) and self.data_dir != "", "--data-dir", self.data_dir, "a directory")
            if self.dataset != "synthetic":
                check(Path(self.data_dir).expanduser().is_dir(), "--data-dir", self.data_dir, "an existing directory")
        check_int("--synthetic-train", self.synthetic_train, low=2)
        check_int("--synthetic-test", self.synthetic_test, low=1)
        if self.long_tail_ratio is not None:
            check_number("--long-tail-ratio", self.long_tail_ratio, low=1.0, high=FLOAT32_MAX)
        check_number("--label-noise", self.label_noise, low=0.0, high=1.0, high_open=True)
        # Planted easy feature (the flags that only act with it are refused without it).
        if self.train_subset is not None:
            check_int("--train-subset", self.train_subset, low=2)
        if self.test_subset is not None:
            check_int("--test-subset", self.test_subset, low=1)
        check_number("--contrast", self.contrast, low=0.0, high=1.0, low_open=True)
        check_choice("--easy-feature", self.easy_feature, EASY_FEATURES)
        check_number("--easy-fraction", self.easy_fraction, low=0.0, high=1.0, low_open=True)
        check_int("--easy-size", self.easy_size, low=1, high=64)
        check_int("--group-window", self.group_window, low=1)
        if self.easy_feature == "none":
            for name, default in (("easy_fraction", 0.9), ("easy_size", 4), ("group_window", 10)):
                check(getattr(self, name) == default, "--" + name.replace("_", "-"), getattr(self, name),
                      f"{default} (the default) unless --easy-feature is given")
        else:  # the square's position codes the label: crops, flips and TrivialAugment would move it
            check(self.augment == "none", "--augment", self.augment, "'none' with --easy-feature (crops and flips "
                  "move the label-placed square)")
            check(not self.trivial_augment, "--trivial-augment", self.trivial_augment,
                  "false with --easy-feature (it would move or erase the label-placed square)")
        # Model and optimization.
        check_choice("--model", self.model, MODELS)
        check_choice("--optimizer", self.optimizer, OPTIMIZERS)
        check_int("--epochs", self.epochs, low=1)
        check_int("--batch-size", self.batch_size, low=1)
        check_number("--lr", self.lr, low=0.0, low_open=True, high=FLOAT32_MAX)
        check_number("--momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check(isinstance(self.nesterov, bool), "--nesterov", self.nesterov, "true or false")
        check(not self.nesterov or self.momentum > 0, "--nesterov", self.nesterov, "false when --momentum is 0")
        check_number("--weight-decay", self.weight_decay, low=0.0, high=FLOAT32_MAX)
        check_number("--rho", self.rho, low=0.0, high=FLOAT32_MAX)  # 0: SAM's two passes at the same point
        check_choice("--schedule", self.schedule, SCHEDULES)
        check_number("--warmup-epochs", self.warmup_epochs, low=0.0, high=float(self.epochs))
        check(isinstance(self.milestones, tuple), "--milestones", self.milestones, "a list of epochs")
        for m in self.milestones:
            check_int("--milestones", m, low=1, high=self.epochs)
        check(list(self.milestones) == sorted(set(self.milestones)), "--milestones", self.milestones, "strictly increasing epochs")
        check_number("--gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        check_number("--label-smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        # Augmentation.
        check_choice("--augment", self.augment, AUGMENTS)
        check(isinstance(self.trivial_augment, bool), "--trivial-augment", self.trivial_augment, "true or false")
        check_number("--mixup-alpha", self.mixup_alpha, low=0.0, high=FLOAT32_MAX)
        # USEFUL.
        check(isinstance(self.useful, bool), "--useful", self.useful, "true or false")
        if self.separate_epoch != "auto":
            # The pre-split phase runs on the first epochs of the full schedule: it must fit in it.
            check_int("--separate-epoch", self.separate_epoch, low=1, high=self.epochs if self.useful else None)
        if self.separate_iteration is not None:
            check_int("--separate-iteration", self.separate_iteration, low=1)
            check(self.separate_epoch == "auto", "--separate-iteration", self.separate_iteration,
                  "no --separate-epoch beside it (give one of the two; --separate-epoch auto clears a preset's)")
        check_int("--upsample-factor", self.upsample_factor, low=1)
        check_choice("--partition", self.partition, PARTITIONS)
        check(self.useful or self.partition == "useful", "--partition", self.partition,
              "'useful' unless --useful is given (a partition is only used by a USEFUL run)")
        check_number("--quantile", self.quantile, low=0.0, high=1.0, high_open=True)
        check(isinstance(self.upweight, bool), "--upweight", self.upweight, "true or false")
        check(self.useful or not self.upweight, "--upweight", self.upweight, "false unless --useful is given")
        # Run control.
        check_int("--seed", self.seed, low=0, high=2**31 - 1)
        check(isinstance(self.deterministic, bool), "--deterministic", self.deterministic, "true or false")
        check(isinstance(self.compile, bool), "--compile", self.compile, "true or false")
        check_choice("--device", self.device, DEVICES)
        check_choice("--precision", self.precision, PRECISIONS)
        check_choice("--memory-format", self.memory_format, MEMORY_FORMATS)
        if self.out is not None:
            check(isinstance(self.out, str) and self.out != "", "--out", self.out, "a directory path")
        check_int("--eval-batch-size", self.eval_batch_size, low=1)
        if self.preset is not None:
            check(isinstance(self.preset, str) and self.preset in preset_names(), "--preset", self.preset,
                  "one of " + ", ".join(preset_names()))

    @property
    def run_name(self) -> str:
        """A short name for the run (used for the default output directory)."""
        parts = [self.dataset, self.model, self.optimizer]
        if self.useful:
            parts.append("useful" if self.partition == "useful" else self.partition)
            if self.upweight:
                parts.append("upweight")
        parts.append(f"s{self.seed}")
        return "-".join(parts)


def default_out(cfg: TrainConfig) -> str:
    """``runs/<dataset>-<model>-<optimizer>[-useful]-s<seed>`` when ``--out`` is not given."""
    return str(Path("runs") / cfg.run_name)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as plain JSON data (what config.json holds)."""
    return to_jsonable(cfg)


# ----------------------------------------------------------------------------------------------
# Presets: real/presets/NAME.toml, flat tables of TrainConfig keys.


def _presets_dir():
    return resources.files("real") / "presets"


def preset_names() -> tuple[str, ...]:
    """Names of the shipped presets (file stems), sorted."""
    folder = _presets_dir()
    try:
        return tuple(sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml")))
    except (FileNotFoundError, NotADirectoryError):  # pragma: no cover - broken install
        return ()


def preset_path(name: str) -> Path:
    """Path of the preset ``name``; an unknown name is a :class:`ConfigError` on ``--preset``."""
    names = preset_names()
    check(name in names, "--preset", name, "one of " + ", ".join(names))
    return Path(str(_presets_dir() / f"{name}.toml"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's keys (underscored), checked against :class:`TrainConfig`'s fields."""
    path = preset_path(name)
    data = load_toml(path)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name_ = key.replace("-", "_")
        if name_ not in fields:
            raise ConfigError(key, message=f"{path}: unknown key {key!r} in preset")
        out[name_] = value
    out["preset"] = name
    return out


def describe_preset(name: str) -> str:
    """The first comment line of a preset file (its one-line description), or ''."""
    for line in preset_path(name).read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""
