"""The trainer's configuration: one frozen dataclass, validated field by field.

Every field is a flag of ``useful-train run`` (``--separate-epoch``), a key of a ``--config`` TOML
file and of a preset (``real/presets/NAME.toml``); defaults < preset < TOML file < command line.
Conversion and errors are :mod:`theory.plumbing.config`'s, so a bad value reads the same whatever its
source (``error: --lr: got -1.0, expected a number in (0, inf)``).  Written to ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping

from theory.plumbing.config import (ConfigError, canonical_numbers, check, check_choice, check_int, check_number,
                                    check_within, config_file_values, config_from_mapping, doc, given_values,
                                    load_toml, to_jsonable)
from theory.useful import JTT_UPWEIGHT, PARTITIONS, SPLIT_ON

from .augment import AUGMENTS, COPY_AUGMENTS
from .datasets import DATASETS
from .distributed import DEVICES
from .models import MODELS
from .optim import ASAM_VARIANTS, OPTIMIZERS
from .planted import EASY_FEATURES
from .schedules import SCHEDULES
from .tensorboard import check_installed

__all__ = ["TrainConfig", "PARTITIONS", "UPWEIGHT_NORMALIZATIONS", "AUGMENTS", "COPY_AUGMENTS", "PRECISIONS",
           "MEMORY_FORMATS", "RUN_CONTROL_FIELDS", "preset_names", "load_preset", "describe_preset", "Setting",
           "setting_names", "load_setting", "split_preset_name", "resolve_train_config",
           "computed_config", "default_out"]

# One tuple of names per choice (the others live with their builders: DATASETS, MODELS, OPTIMIZERS,
# SCHEDULES, DEVICES); the dataclass's Literal types are built from them.
UPWEIGHT_NORMALIZATIONS = ("weights", "batch")  # sum(w l) / sum(w); mean(w l)
PRECISIONS = ("auto", "bf16", "float32")  # auto: bf16 autocast on CUDA, float32 elsewhere
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # auto: channels_last on CUDA

# Fields that say how to run, not what to compute: they may differ between a run and its resume.
RUN_CONTROL_FIELDS = ("out", "resume", "overwrite", "device", "compile", "eval_batch_size", "data_dir", "preset",
                      "download", "mirror", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    """One training run; each field's ``doc`` is its flag's ``--help`` (docs/training.md explains them).  The one
    validator: the builders (optimizer, schedule, phase, partition) trust it; a flag that cannot act is refused."""

    # Data.
    dataset: Literal[tuple(DATASETS)] = doc("cifar10", "the data set (useful-train download NAME fetches it)")
    data_dir: str | None = doc(None, "folder holding the data set's files (fashion-mnist: also Debian's copy)")
    synthetic_train: int = doc(512, "training examples of the synthetic data set", "[2, inf)")
    synthetic_test: int = doc(256, "test examples of the synthetic data set", "[1, inf)")
    long_tail_ratio: float | None = doc(None, "n_max / n_min of a long-tailed training split (exponential "
                                              "class sizes; unset: the balanced split)", "[1, f32]")
    label_noise: float = doc(0.0, "fraction of training labels replaced by a uniformly drawn other class", "[0, 1)")
    # Planted easy feature (real/planted.py).
    train_subset: int | None = doc(None, "train on this many examples, drawn per class with the seed", "[2, inf)")
    test_subset: int | None = doc(None, "evaluate on this many test examples, drawn per class", "[1, inf)")
    contrast: float = doc(1.0, "pixel values times c: the strength of the slow (original) feature", "(0, 1]")
    easy_feature: Literal[EASY_FEATURES] = doc("none", "patch: a white square whose position codes the label, "
                                                       "planted in a fraction --easy-fraction of the images")
    easy_fraction: float = doc(0.9, "fraction of training and test images given the planted square", "(0, 1]")
    easy_size: int = doc(4, "side of the planted square in pixels", "[1, 64]")
    group_window: int = doc(10, "iterations per row of the per-group training accuracy (with the planted feature)",
                            "[1, inf)")
    # Model and optimization.
    model: Literal[tuple(MODELS)] = doc("resnet18", "the network")
    optimizer: Literal[tuple(OPTIMIZERS)] = doc("sgd", "sgd; sam (Foret et al.); asam (adaptive SAM, see --asam-variant)")
    asam_variant: Literal[ASAM_VARIANTS] = doc("kwon", "kwon: Kwon et al.'s official ASAM (T = |w| + 0.01 on "
                                                       "parameters named weight, T = 1 on the others); davda54: "
                                                       "T = |w| on every parameter; only with --optimizer asam")
    epochs: int = doc(200, "epochs of the main phase (the whole budget)", "[1, inf)")
    batch_size: int = doc(128, "global minibatch size (divided over DDP ranks)", "[1, inf)")
    lr: float = doc(0.1, "peak learning rate", "(0, f32]")
    momentum: float = doc(0.9, "SGD momentum", "[0, 1)")
    nesterov: bool = doc(False, "Nesterov momentum (needs --momentum > 0)")
    weight_decay: float = doc(5e-4, "L2 weight decay of SGD", "[0, f32]")
    rho: float = doc(0.05, "SAM/ASAM neighbourhood radius (0: both passes at the same point)", "[0, f32]")
    schedule: Literal[SCHEDULES] = doc("cosine", "learning-rate schedule over the epochs")
    warmup_epochs: float = doc(0.0, "linear warm-up from 0 over this many epochs, [0, --epochs]")
    milestones: tuple[int, ...] = doc((), "epochs where multistep multiplies the rate by --gamma, increasing")
    gamma: float = doc(0.2, "multistep's factor at each milestone", "(0, 1]")
    label_smoothing: float = doc(0.0, "label smoothing of the cross-entropy", "[0, 1)")
    # Augmentation.
    augment: Literal[tuple(AUGMENTS)] = doc("crop-flip", "crop-flip: random crop (padding 4) and horizontal flip")
    trivial_augment: bool = doc(False, "TrivialAugmentWide (torchvision v1's ops and bins) on every example")
    mixup_alpha: float = doc(0.0, "MixUp's Beta(alpha, alpha) parameter (0: off)", "[0, f32]")
    # USEFUL and its baselines.
    useful: bool = doc(False, "USEFUL: train briefly, split each class, upsample, retrain from the same init")
    separate_epoch: int | Literal["auto"] = doc("auto", "epochs before the split, 1-epochs, or auto: where the "
                                                        "training error's decrease slows (real/useful.py)")
    separate_iteration: int | None = doc(None, "split after this many iterations instead (may fall inside an "
                                               "epoch)", "[1, inf)")
    upsample_factor: int = doc(2, "k: the upsampled cluster's multiplicity (copies, or loss weight)", "[1, inf)")
    partition: Literal[tuple(PARTITIONS)] = doc("useful", "which examples to upsample: USEFUL's 2-means split or a baseline")
    split_on: Literal[SPLIT_ON] = doc("logits", "what USEFUL's per-class 2-means clusters: the logits (the "
                                                    "paper), the softmax outputs or the per-example loss")
    quantile: float = doc(0.5, "the quantile baseline: upsample the examples above this loss quantile", "[0, 1)")
    jtt_upweight: int = doc(JTT_UPWEIGHT, "JTT's lambda_up: multiplicity of each error-set example (JTT tunes it "
                                          "in {20, 50, 100}); only with --partition jtt", "[2, inf)")
    upweight: bool = doc(False, "give upsampled examples loss weight k instead of k copies")
    upweight_normalization: Literal[UPWEIGHT_NORMALIZATIONS] = doc(
        "weights", "a batch's weighted loss: weights = sum(w l) / sum(w) (upsampling's expectation); "
                   "batch = mean(w l) (doubling the loss); only with --upweight")
    copy_augment: Literal[tuple(COPY_AUGMENTS)] = doc("none", "trivial-augment: the extra copies of upsampled examples "
                                                       "get TrivialAugmentWide (TADA's variant)")
    # Run control.
    seed: int = doc(0, "seed of initialization, data order and augmentation", "[0, 2147483647]")
    deterministic: bool = doc(False, "deterministic kernels (slower on CUDA)")
    compile: bool = doc(False, "torch.compile the model")
    device: Literal[DEVICES] = doc("auto", "where to train (auto: CUDA when present)")
    precision: Literal[PRECISIONS] = doc("auto", "auto: bf16 autocast on CUDA, float32 elsewhere")
    memory_format: Literal[MEMORY_FORMATS] = doc("auto", "auto: channels_last on CUDA, contiguous elsewhere")
    out: str | None = doc(None, "run directory (default runs/DATASET-MODEL-OPTIMIZER[-useful]-sSEED)")
    resume: bool = doc(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = doc(False, "replace a run of useful-train in --out (never other files)")
    download: bool = doc(False, "fetch and verify the data set into --data-dir first")
    mirror: str | None = doc(None, "with --download: an http(s) base address used instead of the authors'")
    eval_batch_size: int = doc(1024, "batch size of evaluation and of the split's outputs", "[1, inf)")
    preset: str | None = doc(None, "the preset this configuration was built from (recorded)")
    tensorboard: bool = doc(False, "TensorBoard event files in OUT/tensorboard (needs the tensorboard package)")

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_data(self)
        _check_optimization(self)
        _check_useful(self)
        _check_run_control(self)
        canonical_numbers(self)  # lr=1 and lr=1.0 are one configuration

    @property
    def run_name(self) -> str:
        """A short name for the run (the default output directory's)."""
        useful = [self.partition] + (["upweight"] if self.upweight else []) if self.useful else []
        return "-".join([self.dataset, self.model, self.optimizer, *useful, f"s{self.seed}"])


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _default(field: str) -> Any:
    return TrainConfig.__dataclass_fields__[field].default


# The fields whose choices are a registry's keys, read when checked (a registry extended after import counts).
_REGISTRIES = {"dataset": "DATASETS", "model": "MODELS", "optimizer": "OPTIMIZERS", "partition": "PARTITIONS",
               "augment": "AUGMENTS", "copy_augment": "COPY_AUGMENTS"}


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_fields(cfg: TrainConfig) -> None:
    """Each field alone: a bool, one of its choices (a Literal field) or a number in its ``doc`` interval."""
    for name, kind in _field_types().items():
        value, flag = getattr(cfg, name), _flag(name)
        if kind is bool:
            check(isinstance(value, bool), flag, value, "true or false")
        elif typing.get_origin(kind) is Literal:
            choices = tuple(globals()[_REGISTRIES[name]]) if name in _REGISTRIES else typing.get_args(kind)
            check_choice(flag, value, choices)
    check_within(cfg)


def _only_with(cfg: TrainConfig, field: str, condition: bool, needs: str) -> None:
    """A field that only acts under ``condition`` must keep its default otherwise (an accepted flag acts)."""
    value, default = getattr(cfg, field), _default(field)
    check(condition or value == default, _flag(field), value, f"{default!r} (the default) unless {needs}")


def _check_data(cfg: TrainConfig) -> None:
    """The data set, and the planted easy feature (the flags that only act with it refused without it)."""
    if cfg.data_dir is not None:
        check(isinstance(cfg.data_dir, str) and cfg.data_dir != "", "--data-dir", cfg.data_dir, "a directory")
        if cfg.dataset != "synthetic" and not cfg.download:  # --download creates it
            check(Path(cfg.data_dir).expanduser().is_dir(), "--data-dir", cfg.data_dir, "an existing directory")
    for field in ("easy_fraction", "easy_size", "group_window"):
        _only_with(cfg, field, cfg.easy_feature != "none", "--easy-feature is given")
    if cfg.easy_feature != "none":  # the square's position codes the label: nothing may move it
        check(cfg.augment == "none", "--augment", cfg.augment, "'none' with --easy-feature (crops and flips "
              "move the label-placed square)")
        check(not cfg.trivial_augment, "--trivial-augment", cfg.trivial_augment,
              "false with --easy-feature (it would move or erase the label-placed square)")


def _check_optimization(cfg: TrainConfig) -> None:
    _only_with(cfg, "asam_variant", cfg.optimizer == "asam", "--optimizer asam")
    check(not cfg.nesterov or cfg.momentum > 0, "--nesterov", cfg.nesterov, "false when --momentum is 0")
    check_number("--warmup-epochs", cfg.warmup_epochs, low=0.0, high=float(cfg.epochs))
    check(isinstance(cfg.milestones, tuple), "--milestones", cfg.milestones, "a list of epochs")
    for m in cfg.milestones:
        check_int("--milestones", m, low=1, high=cfg.epochs)
    check(list(cfg.milestones) == sorted(set(cfg.milestones)), "--milestones", cfg.milestones,
          "strictly increasing epochs")


def _check_useful(cfg: TrainConfig) -> None:
    if cfg.separate_epoch != "auto":
        # The pre-split phase runs on the first epochs of the full schedule: it must fit in it.
        check_int("--separate-epoch", cfg.separate_epoch, low=1, high=cfg.epochs if cfg.useful else None)
    if cfg.separate_iteration is not None:
        check(cfg.separate_epoch == "auto", "--separate-iteration", cfg.separate_iteration,
              "no --separate-epoch beside it (give one of the two; --separate-epoch auto clears a preset's)")
    check(cfg.useful or cfg.partition == "useful", "--partition", cfg.partition,
          "'useful' unless --useful is given (a partition is only used by a USEFUL run)")
    _only_with(cfg, "split_on", cfg.useful and cfg.partition in ("useful", "random"),
               "--useful with --partition useful or random (the partitions that run USEFUL's 2-means)")
    _only_with(cfg, "quantile", cfg.partition == "quantile", "--partition quantile")
    _only_with(cfg, "jtt_upweight", cfg.partition == "jtt", "--partition jtt")
    check(cfg.partition != "jtt" or cfg.upsample_factor == _default("upsample_factor"), "--upsample-factor",
          cfg.upsample_factor, "2 (its default) with --partition jtt, whose multiplicity is --jtt-upweight")
    check(cfg.useful or not cfg.upweight, "--upweight", cfg.upweight, "false unless --useful is given")
    _only_with(cfg, "upweight_normalization", cfg.upweight, "--upweight is given")
    check(cfg.partition != "class-balanced" or cfg.upsample_factor == 2, "--upsample-factor", cfg.upsample_factor,
          "2 (its default) with --partition class-balanced, which gives class c the multiplicity n_max / n_c")
    if cfg.copy_augment != "none":
        check(cfg.useful and not cfg.upweight, "--copy-augment", cfg.copy_augment,
              "'none' unless --useful upsamples with copies (not with --upweight)")
        check(not cfg.trivial_augment, "--copy-augment", cfg.copy_augment,
              "'none' with --trivial-augment (every example, copies included, is already TrivialAugment-ed)")


def _check_run_control(cfg: TrainConfig) -> None:
    if cfg.out is not None:
        check(isinstance(cfg.out, str) and cfg.out != "", "--out", cfg.out, "a directory path")
    if cfg.download:
        check(cfg.dataset != "synthetic", "--download", cfg.download,
              "false for the synthetic data set (it is generated)")
        check(cfg.data_dir is not None or cfg.dataset == "fashion-mnist", "--download", cfg.download,
              "a --data-dir to download into")
    if cfg.mirror is not None:
        check(cfg.download, "--mirror", cfg.mirror, "no value unless --download is given")
        check(isinstance(cfg.mirror, str) and cfg.mirror.startswith(("http://", "https://")), "--mirror",
              cfg.mirror, "an http:// or https:// address")
    if cfg.tensorboard:
        check_installed()  # a flag that is accepted must act
    if cfg.preset is not None:
        names = preset_names()
        check(isinstance(cfg.preset, str) and cfg.preset in names, "--preset", cfg.preset, "one of " + ", ".join(names))


def computed_config(config: TrainConfig | Mapping[str, Any]) -> dict[str, Any]:
    """What a run computes: its JSON configuration without :data:`RUN_CONTROL_FIELDS`; the one identity that
    resuming (real/rundir.py), grids (real/grid.py) and the reproduce report key runs by."""
    data = to_jsonable(config) if isinstance(config, TrainConfig) else dict(config)
    return {k: v for k, v in data.items() if k not in RUN_CONTROL_FIELDS}


def default_out(cfg: TrainConfig) -> str:
    """``runs/<dataset>-<model>-<optimizer>[-useful]-s<seed>`` when ``--out`` is not given."""
    return str(Path("runs") / cfg.run_name)


# Presets.  real/presets/SETTING.toml (a data set and model) holds TrainConfig keys, a table per optimizer
# (``[sam] rho = 0.1``), a ``description`` and ``[chosen]``: why each value that is not the paper's was chosen.
# Presets are ``SETTING-OPTIMIZER`` and ``SETTING`` (its own ``optimizer``, else sgd).  Resolution: defaults <
# the setting's keys < the table of the run's optimizer (from --optimizer, the TOML file or the preset name) <
# --config TOML < flags: ``--preset cifar10-resnet18-sgd --optimizer sam`` runs SAM at the setting's radius.

PRESET_KEYS = ("description", "chosen", "in_paper")  # top-level keys of a setting file that are not TrainConfig fields


@dataclass(frozen=True)
class Setting:
    """A preset file; ``chosen`` maps a key or ``optimizer.key`` to why it is not the paper's value."""

    name: str
    config: Mapping[str, Any]
    per_optimizer: Mapping[str, Mapping[str, Any]]
    chosen: Mapping[str, str]
    description: str
    in_paper: bool = True  # false: a setting of this package's, none of its values is the paper's

    def source(self, key: str, optimizer: str | None = None) -> str:
        """``"chosen: why"`` or ``"paper"`` (never for a setting the paper lacks) for a value it gives."""
        reason = (self.chosen.get(f"{optimizer}.{key}") if optimizer else None) or self.chosen.get(key)
        if reason:
            return f"chosen: {reason}"
        return "paper" if self.in_paper else "chosen: the paper has no such setting"


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
    """``(setting, optimizer or None)`` of a preset name; an unknown one is a ConfigError on ``--preset``."""
    settings = setting_names()
    if name in settings:
        return name, None
    for opt in OPTIMIZERS:
        if name.endswith("-" + opt) and name[: -len(opt) - 1] in settings:
            return name[: -len(opt) - 1], opt
    raise ConfigError("--preset", name, "one of " + ", ".join(preset_names()) + " (useful-train presets lists them)")


def load_setting(setting: str) -> Setting:
    """Read and check a setting file (unknown keys and tables, ``chosen`` entries naming no value: ConfigErrors)."""
    path = Path(str(_presets_dir() / f"{setting}.toml"))
    data = load_toml(path)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"preset", "optimizer"}  # optimizer: top level only

    def keys(table: Mapping[str, Any], where: str) -> dict[str, Any]:
        for key in table:
            if key.replace("-", "_") not in fields:
                raise ConfigError(key, message=f"{path}: unknown key {where}{key!r} in preset")
        return {key.replace("-", "_"): value for key, value in table.items()}

    top = {k: v for k, v in data.items() if k not in (*PRESET_KEYS, "optimizer") and not isinstance(v, dict)}
    config = keys(top, "")
    if not isinstance(data.get("optimizer", {}), dict):  # the setting's own optimizer (the preset SETTING's)
        check_choice("optimizer", data["optimizer"], OPTIMIZERS)
        config["optimizer"] = data["optimizer"]
    tables = {k: v for k, v in data.items() if isinstance(v, dict) and k not in PRESET_KEYS}
    for key in tables:
        if key not in OPTIMIZERS:
            raise ConfigError(key, message=f"{path}: table [{key}] is not an optimizer ({', '.join(OPTIMIZERS)})")
    per_optimizer = {key: keys(value, f"{key}.") for key, value in tables.items()}
    chosen = dict(data.get("chosen", {}))
    for key in chosen:
        opt, _, field = key.rpartition(".")
        if field.replace("-", "_") not in (per_optimizer.get(opt, {}) if opt else config):
            raise ConfigError(key, message=f"{path}: [chosen] names {key!r}, which the preset does not set")
    in_paper = data.get("in_paper", True)
    check(isinstance(in_paper, bool), "in_paper", in_paper, f"true or false in {path}")
    return Setting(name=setting, config=config, per_optimizer=per_optimizer, chosen=chosen,
                   description=str(data.get("description", "")), in_paper=in_paper)


def _preset(name: str, optimizer: str | None = None) -> tuple[Setting, str, dict[str, Any]]:
    """The setting of preset ``name``, the run's optimizer (``optimizer``, else the preset's own) and its keys."""
    setting_name, own = split_preset_name(name)
    setting = load_setting(setting_name)
    own = own or setting.config.get("optimizer", "sgd")
    opt = optimizer or own
    return setting, opt, {**setting.config, "optimizer": own, **setting.per_optimizer.get(opt, {}), "preset": name}


def load_preset(name: str, optimizer: str | None = None) -> dict[str, Any]:
    """The TrainConfig keys preset ``name`` gives a run with ``optimizer`` (default: the preset's own)."""
    return _preset(name, optimizer)[2]


def describe_preset(name: str) -> str:
    """A preset's one-line description, with the radius each optimizer takes."""
    setting, opt, _ = _preset(name)
    radii = "; ".join(f"{o} rho {t['rho']:g} ({setting.source('rho', o).split(':')[0]})"
                      for o, t in setting.per_optimizer.items() if "rho" in t)
    return f"{setting.description} [{opt}]" + (f"; {radii}" if radii else "")


def legacy_fields(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run configuration with the fields added since set to what that run computed (not today's
    defaults): ASAM was davda54's mode, JTT's multiplicity was ``upsample_factor``."""
    out = dict(stored)
    if out.get("optimizer") == "asam":
        out.setdefault("asam_variant", "davda54")
    if out.get("partition") == "jtt" and "jtt_upweight" not in out:
        out["jtt_upweight"], out["upsample_factor"] = out.get("upsample_factor", 2), 2
    return out


def resolve_train_config(given: Mapping[str, Any], *, config_path: str | None = None, preset: str | None = None,
                         stored: Mapping[str, Any] | None = None) -> tuple[TrainConfig, dict[str, str]]:
    """The configuration of ``given`` (flags: field -> raw value or None) over the ``--config`` TOML file over
    the preset (or the ``stored`` run's configuration, when resuming), and the source of each value."""
    toml = config_file_values(TrainConfig, config_path) if config_path is not None else {}
    flags = given_values(TrainConfig, given)
    merged, sources = {}, {}
    if stored is not None:
        merged.update(legacy_fields(stored))
        sources.update({k: "stored run" for k in stored})
    elif preset is not None:
        optimizer = flags.get("optimizer", toml.get("optimizer"))
        setting, opt, layer = _preset(preset, optimizer if optimizer in OPTIMIZERS else None)
        merged.update(layer)
        for key in layer:
            table = opt if key in setting.per_optimizer.get(opt, {}) else None
            where = f"preset {preset}" + (f", its [{table}] values" if table else "")
            sources[key] = f"{where} ({setting.source(key, table)})"
    for layer, source in ((toml, f"--config {config_path}"), (flags, "command line")):
        merged.update(layer)
        sources.update({k: source for k in layer})
    cfg = config_from_mapping(TrainConfig, merged, source=str(config_path) if config_path else "command line")
    return cfg, {f.name: sources.get(f.name, "default") for f in dataclasses.fields(TrainConfig)}
