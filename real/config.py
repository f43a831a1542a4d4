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
from typing import Any, Literal, Mapping

from theory.plumbing.config import (
    ConfigError,
    canonical_numbers,
    check,
    check_choice,
    check_int,
    check_number,
    config_file_values,
    config_from_mapping,
    given_values,
    load_toml,
    to_jsonable,
)

from .datasets import DATASETS
from .distributed import DEVICES
from .models import MODELS
from .optim import OPTIMIZERS
from .planted import EASY_FEATURES
from .schedules import SCHEDULES
from .tensorboard import check_installed

__all__ = [
    "TrainConfig",
    "PARTITIONS",
    "AUGMENTS",
    "COPY_AUGMENTS",
    "PRECISIONS",
    "MEMORY_FORMATS",
    "RUN_CONTROL_FIELDS",
    "preset_names",
    "load_preset",
    "describe_preset",
    "Setting",
    "setting_names",
    "load_setting",
    "split_preset_name",
    "resolve_train_config",
    "config_to_dict",
    "computed_config",
    "default_out",
]

# One tuple of names per choice (the others live with their builders: DATASETS, MODELS, OPTIMIZERS,
# SCHEDULES, DEVICES); the dataclass's Literal types are built from them.
PARTITIONS = ("useful", "random", "quantile", "misclassified", "jtt", "eiil", "class-balanced")
COPY_AUGMENTS = ("none", "trivial-augment")  # what the extra copies of upsampled examples receive
AUGMENTS = ("crop-flip", "none")
PRECISIONS = ("auto", "bf16", "float32")  # auto: bf16 autocast on CUDA, float32 elsewhere
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # auto: channels_last on CUDA
FLOAT32_MAX = 3.4028234663852886e38  # values that go into float32 tensors must fit

# Fields that say how to run, not what to compute: they may differ between a run and its resume.
RUN_CONTROL_FIELDS = ("out", "resume", "overwrite", "device", "compile", "eval_batch_size", "data_dir", "preset",
                      "download", "mirror", "tensorboard")


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
    ``upweight`` (loss weight k instead of k copies), ``copy_augment`` (``trivial-augment``: the extra
    copies of upsampled examples also receive TrivialAugmentWide, TADA's variant, instead of being
    plain duplicates).

    Run control: ``seed``, ``deterministic``, ``compile``, ``device``, ``out``, ``resume``,
    ``overwrite``, ``eval_batch_size``, ``preset`` (the preset it was built from, recorded),
    ``download`` (fetch and verify the data set into ``data_dir`` first, real/download.py),
    ``mirror`` (its base address instead of the authors'),
    ``tensorboard`` (event files in ``OUT/tensorboard``; needs the optional tensorboard package).

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
    copy_augment: Literal[COPY_AUGMENTS] = "none"
    seed: int = 0
    deterministic: bool = False
    compile: bool = False
    device: Literal[DEVICES] = "auto"
    precision: Literal[PRECISIONS] = "auto"
    memory_format: Literal[MEMORY_FORMATS] = "auto"
    out: str | None = None
    resume: bool = False
    overwrite: bool = False
    download: bool = False
    mirror: str | None = None
    synthetic_train: int = 512
    synthetic_test: int = 256
    eval_batch_size: int = 1024
    preset: str | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        # Data.
        check_choice("--dataset", self.dataset, DATASETS)
        if self.data_dir is not None:
            check(isinstance(self.data_dir, str) and self.data_dir != "", "--data-dir", self.data_dir, "a directory")
            if self.dataset != "synthetic" and not self.download:  # --download creates it
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
        check(self.partition != "class-balanced" or self.upsample_factor == 2, "--upsample-factor", self.upsample_factor,
              "2 (its default) with --partition class-balanced, which gives class c the multiplicity n_max / n_c")
        check_choice("--copy-augment", self.copy_augment, COPY_AUGMENTS)
        if self.copy_augment != "none":
            check(self.useful and not self.upweight, "--copy-augment", self.copy_augment,
                  "'none' unless --useful upsamples with copies (not with --upweight)")
            check(not self.trivial_augment, "--copy-augment", self.copy_augment,
                  "'none' with --trivial-augment (every example, copies included, is already TrivialAugment-ed)")
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
        check(isinstance(self.download, bool), "--download", self.download, "true or false")
        if self.download:
            check(self.dataset != "synthetic", "--download", self.download, "false for the synthetic data set (it is generated)")
            check(self.data_dir is not None or self.dataset == "fashion-mnist", "--download", self.download,
                  "a --data-dir to download into")
        if self.mirror is not None:
            check(self.download, "--mirror", self.mirror, "no value unless --download is given")
            check(isinstance(self.mirror, str) and self.mirror.startswith(("http://", "https://")), "--mirror",
                  self.mirror, "an http:// or https:// address")
        check(isinstance(self.tensorboard, bool), "--tensorboard", self.tensorboard, "true or false")
        if self.tensorboard:
            check_installed()  # a flag that is accepted must act
        if self.preset is not None:
            check(isinstance(self.preset, str) and self.preset in preset_names(), "--preset", self.preset,
                  "one of " + ", ".join(preset_names()))
        canonical_numbers(self)  # lr=1 and lr=1.0 are one configuration

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


def computed_config(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """What a run computes: its configuration as JSON data without :data:`RUN_CONTROL_FIELDS` (where
    it lives, how it is run).  Two runs compute the same thing iff these are equal: the one identity
    that resuming (real/rundir.py), grids (real/grid.py) and the reproduce report key runs by."""
    data = to_jsonable(config) if isinstance(config, TrainConfig) else dict(config)
    return {k: v for k, v in data.items() if k not in RUN_CONTROL_FIELDS}


def default_out(cfg: TrainConfig) -> str:
    """``runs/<dataset>-<model>-<optimizer>[-useful]-s<seed>`` when ``--out`` is not given."""
    return str(Path("runs") / cfg.run_name)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as plain JSON data (what config.json holds)."""
    return to_jsonable(cfg)


# ----------------------------------------------------------------------------------------------
# Presets: a setting (data set and model) with its per-optimizer values.
#
# real/presets/SETTING.toml holds the setting's TrainConfig keys at the top level, a table per
# optimizer with the values that apply when the run uses that optimizer (``[sam] rho = 0.1``), a
# ``description`` and a ``[chosen]`` table: every value that is not the paper's, with why it was
# chosen (keys ``field`` or ``optimizer.field``).  Preset names are ``SETTING-OPTIMIZER`` for every
# optimizer (``cifar10-resnet18-sam``) and ``SETTING`` itself (its own ``optimizer``, else sgd).
#
# Resolution (lowest first): defaults < the setting's keys < the table of the run's optimizer (the
# one given by --optimizer / the TOML file / the preset name) < the --config TOML file < flags.  So
# ``--preset cifar10-resnet18-sgd --optimizer sam`` runs SAM at the setting's radius, and an explicit
# ``--rho`` wins.

PRESET_KEYS = ("description", "chosen")  # top-level keys of a setting file that are not TrainConfig fields


@dataclass(frozen=True)
class Setting:
    """A preset file: ``config`` (TrainConfig keys), ``per_optimizer`` (optimizer -> keys),
    ``chosen`` (key or ``optimizer.key`` -> why it is not the paper's value), ``description``."""

    name: str
    config: Mapping[str, Any]
    per_optimizer: Mapping[str, Mapping[str, Any]]
    chosen: Mapping[str, str]
    description: str

    def source(self, key: str, optimizer: str | None = None) -> str:
        """``"chosen: why"`` or ``"paper"`` for a value the setting gives."""
        reason = self.chosen.get(f"{optimizer}.{key}") if optimizer else None
        reason = reason or self.chosen.get(key)
        return f"chosen: {reason}" if reason else "paper"


def _presets_dir():
    return resources.files("real") / "presets"


def setting_names() -> tuple[str, ...]:
    """The settings shipped in real/presets/ (file stems), sorted."""
    try:
        return tuple(sorted(p.name[: -len(".toml")] for p in _presets_dir().iterdir() if p.name.endswith(".toml")))
    except (FileNotFoundError, NotADirectoryError):  # pragma: no cover - broken install
        return ()


def preset_names() -> tuple[str, ...]:
    """Every preset name: each setting, and each setting with each optimizer."""
    return tuple(sorted([*setting_names(), *(f"{s}-{o}" for s in setting_names() for o in OPTIMIZERS)]))


def split_preset_name(name: str) -> tuple[str, str | None]:
    """``(setting, optimizer)`` of a preset name (optimizer None for a bare setting name); an unknown
    name is a :class:`ConfigError` on ``--preset``."""
    settings = setting_names()
    if name in settings:
        return name, None
    for opt in OPTIMIZERS:
        if name.endswith("-" + opt) and name[: -len(opt) - 1] in settings:
            return name[: -len(opt) - 1], opt
    raise ConfigError("--preset", name, "one of " + ", ".join(preset_names()) + " (useful-train presets lists them)")


def load_setting(setting: str) -> Setting:
    """Read and check a setting file (unknown keys, tables of unknown optimizers, ``chosen`` entries
    that name no value of the file: each a ConfigError naming the file)."""
    path = Path(str(_presets_dir() / f"{setting}.toml"))
    data = load_toml(path)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}

    def keys(table: Mapping[str, Any], where: str) -> dict[str, Any]:
        out = {}
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in fields or name in ("preset", "optimizer"):
                raise ConfigError(key, message=f"{path}: unknown key {where}{key!r} in preset")
            out[name] = value
        return out

    config = keys({k: v for k, v in data.items() if k not in PRESET_KEYS and not isinstance(v, dict)}, "")
    if "optimizer" in data and not isinstance(data["optimizer"], dict):
        check_choice("optimizer", data["optimizer"], OPTIMIZERS)
        config["optimizer"] = data["optimizer"]
    per_optimizer = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in PRESET_KEYS:
            if key not in OPTIMIZERS:
                raise ConfigError(key, message=f"{path}: table [{key}] is not an optimizer ({', '.join(OPTIMIZERS)})")
            per_optimizer[key] = keys(value, f"{key}.")
    chosen = dict(data.get("chosen", {}))
    for key in chosen:
        opt, _, field = key.rpartition(".")
        present = field.replace("-", "_") in (per_optimizer.get(opt, {}) if opt else config)
        if not present:
            raise ConfigError(key, message=f"{path}: [chosen] names {key!r}, which the preset does not set")
    return Setting(name=setting, config=config, per_optimizer=per_optimizer, chosen=chosen,
                   description=str(data.get("description", "")))


def load_preset(name: str, optimizer: str | None = None) -> dict[str, Any]:
    """The TrainConfig keys preset ``name`` gives for a run with ``optimizer`` (default: the preset's
    own): the setting's keys, its optimizer, that optimizer's table, and ``preset = name``."""
    setting_name, own = split_preset_name(name)
    setting = load_setting(setting_name)
    own = own or setting.config.get("optimizer", "sgd")
    opt = optimizer or own
    return {**setting.config, "optimizer": own, **setting.per_optimizer.get(opt, {}), "preset": name}


def describe_preset(name: str) -> str:
    """A preset's one-line description, with the radius each optimizer takes."""
    setting_name, own = split_preset_name(name)
    setting = load_setting(setting_name)
    radii = "; ".join(f"{o} rho {t['rho']:g} ({setting.source('rho', o).split(':')[0]})"
                      for o, t in setting.per_optimizer.items() if "rho" in t)
    opt = own or setting.config.get("optimizer", "sgd")
    return f"{setting.description} [{opt}]" + (f"; {radii}" if radii else "")


# ----------------------------------------------------------------------------------------------
# Resolution: defaults < preset < --config TOML < flags, each value with its source.


def resolve_train_config(given: Mapping[str, Any], *, config_path: str | None = None, preset: str | None = None,
                         stored: Mapping[str, Any] | None = None) -> tuple[TrainConfig, dict[str, str]]:
    """The configuration of ``given`` (flags: field -> raw value, None when not given) over the
    ``--config`` TOML file over the preset (or, when resuming, over the ``stored`` configuration of
    the run), and the source of each value: ``default``, ``preset NAME (paper)``, ``preset NAME
    (chosen: why)``, ``stored run``, ``--config FILE`` or ``command line``."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    toml = config_file_values(TrainConfig, config_path) if config_path is not None else {}
    flags = given_values(TrainConfig, given)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if stored is not None:
        merged.update(stored)
        sources.update({k: "stored run" for k in stored})
    elif preset is not None:
        optimizer = flags.get("optimizer", toml.get("optimizer"))
        layer = load_preset(preset, optimizer=optimizer if optimizer in OPTIMIZERS else None)
        setting_name, _ = split_preset_name(preset)
        setting = load_setting(setting_name)
        opt = optimizer if optimizer in OPTIMIZERS else layer["optimizer"]
        merged.update(layer)
        for key in layer:
            table = opt if key in setting.per_optimizer.get(opt, {}) else None
            where = f"preset {preset}" + (f", its [{table}] values" if table else "")
            sources[key] = f"{where} ({setting.source(key, table)})"
    merged.update(toml)
    sources.update({k: f"--config {config_path}" for k in toml})
    merged.update(flags)
    sources.update({k: "command line" for k in flags})
    cfg = config_from_mapping(TrainConfig, merged, source=str(config_path) if config_path else "command line")
    return cfg, {f: sources.get(f, "default") for f in fields}
