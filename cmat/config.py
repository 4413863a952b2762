"""Typed run configuration: dataclasses, YAML presets per task sequence, CLI overrides.

Resolution order (later wins): dataclass defaults → ``cmat/presets/<tasks>.yaml`` (if any) →
its ``certified:`` block when the objective is ``ibp``/``crown-ibp`` → a user ``--config`` YAML
file (and its ``certified:`` block) → ``--set section.key=value`` overrides and explicit CLI flags.
The resolved configuration is written as ``config.yaml`` beside every output.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from cmat.checks import choice, number
from cmat.errors import CmatError
from cmat.nn.backbones import ARCHS

PRESET_DIR = Path(__file__).parent / "presets"
# objectives that train for certificates: a preset's ``certified:`` block applies to them
# (tests/test_config.py checks this against the objective registry)
CERTIFIED_OBJECTIVES = ("ibp", "crown-ibp")


@dataclass
class ThreatConfig:
    """The threat model of a sequence: L∞ radius and attack step, in [0,1] pixel units."""

    eps: float = 8 / 255
    alpha: float = 2 / 255


@dataclass
class ModelConfig:
    arch: str = "smallcnn"
    width: float = 1.0


@dataclass
class TrainConfig:
    """Per-task optimisation. ``select``: which epoch's weights to keep — ``auto`` picks the best
    validation robust accuracy for adversarial objectives and clean accuracy for ``standard``."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (momentum, Nesterov) or adam (certified training's choice)
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    select: str = "auto"
    val_fraction: float = 0.1  # of each class's training images, held out for validation
    val_attack_samples: int = 512
    samples: Optional[int] = None  # train on a seeded subset of N training images per task (rehearsals)


@dataclass
class ObjectiveConfig:
    """Training objective. ``steps``: PGD/TRADES inner steps; ``bn``: BN mode while generating
    training attacks (``eval``: running statistics; ``batch``: batch statistics, running-stat
    updates suppressed)."""

    name: str = "pgd"
    steps: int = 10
    trades_beta: float = 6.0
    free_replays: int = 4
    fast_alpha: float = 1.25
    # pgd, trades, fast: the training attack's ε (and α) grow linearly from 0 over this fraction
    # of a phase's iterations (0: off); warm phases (growth, compaction, retraining) start at ε
    eps_ramp: float = 0.0
    bn: str = "eval"
    # certified training (ibp, crown-ibp): fractions of a phase's iterations, final κ and β
    cert_warmup: float = 0.1
    cert_ramp: float = 0.5
    kappa_end: float = 0.5
    beta_end: float = 0.0
    cert_eps_factor: float = 1.0
    cert_clip: float = 10.0  # gradient-norm clip of certified training (0: off)


@dataclass
class EvalConfig:
    """The harness: attacks run after each task on every seen task (``worst``, the per-image
    worst case over all of them, is always added). ``samples``: evaluate a fixed seeded subset
    of this many test images per task — every column, clean included, is then on that subset
    (the full-set clean accuracy is reported separately). ``alphas``: per-attack step size, e.g.
    ``{pgd10: 0.01}``; an evaluation PGD-k otherwise uses α = max(threat α, 2.5·ε/k)."""

    attacks: list = field(default_factory=lambda: ["clean", "fgsm", "pgd10", "pgd40", "aa"])
    samples: Optional[int] = None
    batch_size: int = 256
    alphas: dict = field(default_factory=dict)


@dataclass
class AccelConfig:
    """Fast paths, off by default: ``bf16`` (``off``/``on``/``auto``) runs training attacks and
    training forwards under bf16 autocast (validation and evaluation stay float32, so reported
    accuracies are float32 accuracies); ``auto`` measures a few steps both ways on this device
    and uses bf16 only when it is faster (:func:`cmat.accel.resolve_bf16`); ``channels_last``
    stores 4-D weights and batches in NHWC."""

    bf16: str = "off"
    channels_last: bool = False


@dataclass
class RunConfig:
    tasks: str = "digits-5split"
    max_tasks: Optional[int] = None  # train and evaluate only the first N tasks (rehearsals)
    method: str = "cmat"
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default (all cores)
    deterministic: bool = False
    data_root: Optional[str] = None
    download: bool = False
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)
    method_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return None if value is None or value == "null" else _coerce(value, args[0], where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise CmatError(f"config {where}: expected true/false, got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise CmatError(f"config {where}: expected a number, got {value!r}")
        try:
            if isinstance(value, str) and "/" in value and typ is float:  # "8/255"
                num, den = value.split("/")
                out = float(num) / float(den)
            else:
                out = typ(value)
        except (TypeError, ValueError, OverflowError, ZeroDivisionError):
            raise CmatError(f"config {where}: expected a finite number, got {value!r}") from None
        if typ is int and isinstance(value, float) and value != out:
            raise CmatError(f"config {where}: expected an integer, got {value!r}")
        if typ is float and not math.isfinite(out):
            raise CmatError(f"config {where}: expected a finite number, got {value!r}")
        return out
    if typ is str:
        if not isinstance(value, (str, int, float)):
            raise CmatError(f"config {where}: expected a string, got {value!r}")
        return str(value)
    if typ is list or origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise CmatError(f"config {where}: expected a list, got {value!r}")
        return list(value)
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise CmatError(f"config {where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _merge(obj: Any, data: dict, where: str = "") -> None:
    """Update dataclass ``obj`` in place from a nested dict, type-checking every value."""
    if not isinstance(data, dict):
        raise CmatError(f"config {where or 'file'}: expected a mapping")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise CmatError(f"config: unknown key {path!r} (valid: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path)
        elif key in ("method_options", "alphas"):
            current.update(_coerce(value, dict, path))
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CmatError(f"config file not found: {path}") from None
    except (IsADirectoryError, PermissionError) as err:
        raise CmatError(f"config file {path} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise CmatError(f"config file {path} is not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise CmatError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise CmatError(f"config file {path} must be a mapping of sections (e.g. 'train: {{epochs: 5}}'), "
                        f"got a {type(data).__name__}")
    return data or {}


def preset_names() -> list:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def parse_set(items) -> dict:
    """``["train.epochs=3", "threat.eps=8/255"]`` → nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise CmatError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def _layers(preset: dict, user: dict, overrides: dict, certified: bool) -> RunConfig:
    cfg = RunConfig()
    for data, where in ((preset, ""), (user, "")):
        data = dict(data)
        block = data.pop("certified", None)
        _merge(cfg, data, where)
        if certified and block is not None:
            _merge(cfg, block, "certified")
    _merge(cfg, overrides, "")
    return cfg


def resolve(tasks: Optional[str] = None, config_file: Optional[str] = None,
            overrides: Optional[dict] = None) -> RunConfig:
    """Build the :class:`RunConfig` for a run (see module docstring for the order). A preset
    (or user file) may hold a ``certified:`` block of the same sections; it applies, right after
    the file it is in, when the resolved objective is certified (``CERTIFIED_OBJECTIVES``). A
    ``slurm:`` block in the user file is the SLURM launcher's and is ignored here."""
    user = _read_yaml(Path(config_file)) if config_file else {}
    user.pop("slurm", None)  # launcher settings (cmat.launch.slurm), not part of what a run computes
    overrides = overrides or {}
    name = overrides.get("tasks") or user.get("tasks") or tasks or RunConfig.tasks
    if not isinstance(name, str):
        raise CmatError(f"config tasks: expected a task-sequence name, got {name!r}")
    preset_file = PRESET_DIR / f"{name}.yaml"
    preset = _read_yaml(preset_file) if preset_file.exists() else {}
    for data, where in ((preset, str(preset_file)), (user, str(config_file))):
        if "certified" in data and not isinstance(data["certified"], dict):
            raise CmatError(f"config {where}: certified must be a mapping of sections")
    cfg = _layers(preset, user, overrides, certified=False)
    if cfg.objective.name in CERTIFIED_OBJECTIVES:
        cfg = _layers(preset, user, overrides, certified=True)
    cfg.tasks = name
    validate(cfg)
    return cfg


SEED_LIMIT = 2 ** 63
COUNT_LIMIT = 10 ** 7  # epochs, batch sizes, steps: anything larger is a typo, not a plan


def bf16_mode(value) -> Optional[str]:
    """``off``, ``on`` or ``auto`` from a config value (YAML booleans included); None if invalid."""
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value).strip().lower()
    return {"true": "on", "on": "on", "yes": "on", "1": "on", "false": "off", "off": "off", "no": "off",
            "0": "off", "auto": "auto"}.get(text)


def validate(cfg: RunConfig) -> None:
    """Every value a user can set, checked before anything is written; each failure raises a
    one-line :class:`CmatError` naming the key and the valid range."""
    number("threat.eps", cfg.threat.eps, 0, 1)
    number("threat.alpha", cfg.threat.alpha, 0, 1, lo_open=True)
    choice("model.arch", cfg.model.arch, sorted(ARCHS))
    number("model.width", cfg.model.width, 0, 16, lo_open=True)
    mode = bf16_mode(cfg.accel.bf16)
    if mode is None:
        raise CmatError(f"accel.bf16 must be off, on or auto, got {cfg.accel.bf16!r}")
    cfg.accel.bf16 = mode
    if cfg.max_tasks is not None:
        number("max_tasks", cfg.max_tasks, 1, COUNT_LIMIT)
    _validate_train(cfg.train)
    _validate_objective(cfg.objective, cfg.threat)
    _validate_eval(cfg.eval)
    number("seed", cfg.seed, 0, SEED_LIMIT, hi_open=True)
    number("threads", cfg.threads, 0, 4096)


def _validate_train(tc: TrainConfig) -> None:
    number("train.epochs", tc.epochs, 1, COUNT_LIMIT)
    number("train.batch_size", tc.batch_size, 1, COUNT_LIMIT)
    number("train.lr", tc.lr, 0, 100, lo_open=True)
    number("train.momentum", tc.momentum, 0, 1, hi_open=True)
    number("train.weight_decay", tc.weight_decay, 0, 1)
    number("train.val_fraction", tc.val_fraction, 0, 1, lo_open=True, hi_open=True)
    number("train.val_attack_samples", tc.val_attack_samples, 1, COUNT_LIMIT)
    if tc.samples is not None:
        number("train.samples", tc.samples, 1, COUNT_LIMIT)
    choice("train.optimizer", tc.optimizer, ("sgd", "adam"))
    choice("train.schedule", tc.schedule, ("cosine", "step", "constant"))
    choice("train.select", tc.select, ("auto", "robust", "clean", "last"))


def _validate_objective(oc: ObjectiveConfig, threat: ThreatConfig) -> None:
    number("objective.steps", oc.steps, 1, 10 ** 4)
    number("objective.trades_beta", oc.trades_beta, 0, 1e4)
    number("objective.free_replays", oc.free_replays, 1, 10 ** 3)
    number("objective.fast_alpha", oc.fast_alpha, 0, 10, lo_open=True)
    number("objective.eps_ramp", oc.eps_ramp, 0, 1)
    if oc.eps_ramp and oc.name not in ("pgd", "trades", "fast") + CERTIFIED_OBJECTIVES + ("standard",):
        raise CmatError(f"objective.eps_ramp applies to the pgd, trades and fast objectives, not {oc.name!r} "
                        f"(set objective.eps_ramp=0)")
    number("objective.cert_warmup", oc.cert_warmup, 0, 1)
    number("objective.cert_ramp", oc.cert_ramp, 0, 1)
    if oc.cert_warmup + oc.cert_ramp > 1:
        raise CmatError("objective.cert_warmup + objective.cert_ramp must be ≤ 1 (fractions of a training phase)")
    number("objective.kappa_end", oc.kappa_end, 0, 1)
    number("objective.beta_end", oc.beta_end, 0, 1)
    number("objective.cert_eps_factor", oc.cert_eps_factor, 0, 10, lo_open=True)
    number("objective.cert_clip", oc.cert_clip, 0, 1e6)
    choice("objective.bn", oc.bn, ("eval", "batch"))
    reach = oc.steps * threat.alpha
    if oc.name in ("pgd", "trades") and reach < threat.eps * (1 - 1e-9):
        need = math.ceil(threat.eps / threat.alpha - 1e-9)
        raise CmatError(f"the training attack cannot reach the ε-ball's boundary: objective.steps × threat.alpha = "
                        f"{oc.steps} × {threat.alpha:.4g} = {reach:.4g} < threat.eps = {threat.eps:.4g}; "
                        f"set objective.steps ≥ {need} or threat.alpha ≥ {threat.eps / oc.steps:.4g}")


def _validate_eval(ec: EvalConfig) -> None:
    if ec.samples is not None:
        number("eval.samples", ec.samples, 1, COUNT_LIMIT)
    number("eval.batch_size", ec.batch_size, 1, COUNT_LIMIT)
    if not ec.attacks or not all(isinstance(a, str) for a in ec.attacks):
        raise CmatError(f"eval.attacks must be a non-empty list of attack names, got {ec.attacks!r}")
    for name, value in ec.alphas.items():
        if not re.fullmatch(r"pgd\d+(-cw)?", str(name)):
            raise CmatError(f"eval.alphas: {name!r} is not a PGD attack name (e.g. pgd10, pgd40-cw)")
        number(f"eval.alphas.{name}", value, 0, lo_open=True)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def from_dict(data: dict) -> RunConfig:
    cfg = RunConfig()
    _merge(cfg, data, "")
    return cfg


def stored_config_matches(stored_yaml: str, cfg_yaml: str) -> bool:
    """Whether a run directory's ``config.yaml`` text describes the configuration ``cfg_yaml``:
    keys the stored file lacks (added to cmat later) count as their defaults, which is what the
    run did; an unreadable file matches nothing."""
    try:
        stored = yaml.safe_load(to_yaml(from_dict(yaml.safe_load(stored_yaml))))
    except (CmatError, TypeError, AttributeError, yaml.YAMLError):
        return False
    return stored == yaml.safe_load(cfg_yaml)
