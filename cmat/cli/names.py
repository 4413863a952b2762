"""The names a flag takes, read from their registries when they are shown.

Every ``--help`` that takes a method, objective, architecture, attack, bound, task sequence or
transfer strategy, and the names table in docs/cli.md, are built here from the registries:
methods :mod:`cmat.catalog` (plugins included), objectives :mod:`cmat.objectives`, architectures
``cmat.nn.backbones.ARCHS``, attacks :mod:`cmat.attacks.factory`, bounds
``cmat.bounds.margins.BOUNDS``, task sequences ``cmat.tasks.registry.SEQUENCES``, strategies
:mod:`cmat.transfer`. A newly registered name therefore appears in the help without a CLI edit.
Defaults are what the presets resolve to (:func:`cmat.config.resolve`), not a copy of them.

The registries are imported when a help text is rendered, not when the CLI is imported, so
``cmat --help`` starts without loading torch.
"""
from __future__ import annotations

from typing import Callable, Optional

import click

from cmat.errors import CmatError


def method_names(plugins: bool = True) -> list:
    """Every registered method, sorted (``plugins=False``: the built-in ones only)."""
    from cmat.catalog import BUILT_IN, available_methods

    return available_methods() if plugins else sorted(BUILT_IN)


def objective_names() -> list:
    from cmat.objectives import objective_names as registered

    return list(registered())


def arch_names() -> list:
    from cmat.nn.backbones import ARCHS

    return list(ARCHS)


def attack_names() -> list:
    """The evaluation attack names, as each form declares them (N = steps, R = restarts)."""
    from cmat.attacks.factory import FORMS

    return [name for form in FORMS for name in form.example.split(", ")]


def bound_names() -> list:
    from cmat.bounds.margins import BOUNDS

    return list(BOUNDS)


def sequence_names() -> list:
    from cmat.tasks.registry import SEQUENCES

    return list(SEQUENCES)


def strategy_names() -> list:
    """The transfer strategies' forms (``tl-K``: K ≥ 1)."""
    from cmat.transfer import STRATEGY_FORMS

    return [s.strip().split(" ")[0] for s in STRATEGY_FORMS.split(",")]


REGISTRIES: dict = {"method": method_names, "objective": objective_names, "arch": arch_names,
                    "attack": attack_names, "bound": bound_names, "tasks": sequence_names,
                    "strategy": strategy_names}


def preset_default(get: Callable, overrides: Optional[dict] = None) -> str:
    """What a flag defaults to: ``get(config)`` over every sequence's resolved preset. One value
    when they agree; else each value with its sequences, the commonest as "the others"."""
    from cmat.config import resolve

    groups: dict = {}
    for seq in sequence_names():
        groups.setdefault(str(get(resolve(seq, None, overrides))), []).append(seq)
    if len(groups) == 1:
        return next(iter(groups))
    common = max(groups, key=lambda value: len(groups[value]))
    parts = [f"{value} ({', '.join(seqs)})" for value, seqs in groups.items() if value != common]
    return "the preset's: " + ", ".join(parts) + f", {common} (the others)"


def arch_default() -> str:
    from cmat.config import CERTIFIED_OBJECTIVES

    plain = preset_default(lambda c: c.model.arch)
    certified = preset_default(lambda c: c.model.arch, {"objective": {"name": CERTIFIED_OBJECTIVES[0]}})
    return f"{plain}; under {' or '.join(CERTIFIED_OBJECTIVES)}, {certified}"


def default_sequence() -> str:
    from cmat.config import RunConfig

    return RunConfig().tasks


DEFAULTS: dict = {"method": lambda: preset_default(lambda c: c.method),
                  "objective": lambda: preset_default(lambda c: c.objective.name),
                  "arch": arch_default,
                  "attack": lambda: preset_default(lambda c: ",".join(c.eval.attacks)),
                  "tasks": default_sequence}


def names_for_help(kind: str) -> str:
    """The registered names of ``kind``, comma-separated. A plugin that fails to load does not
    hide the help: the methods registered so far are listed with the plugin's error."""
    if kind != "method":
        return ", ".join(REGISTRIES[kind]())
    try:
        return ", ".join(method_names())
    except CmatError as err:
        return ", ".join(method_names(plugins=False)) + f" (plugins not listed: {err})"


def help_text(kind: str, template: str) -> str:
    """``template`` with ``{names}`` (the registered names of ``kind``) and ``{default}``."""
    fields = {"names": names_for_help(kind)}
    if "{default}" in template:
        fields["default"] = DEFAULTS[kind]()
    return template.format(**fields)


class RegistryOption(click.Option):
    """A click option whose help is a template rendered from a registry when the help is shown:
    ``registry`` is a key of :data:`REGISTRIES`, ``help`` may hold ``{names}`` and ``{default}``."""

    def __init__(self, *args, registry: str, **kwargs):
        if registry not in REGISTRIES:
            raise ValueError(f"no registry {registry!r} (known: {', '.join(REGISTRIES)})")
        self.registry = registry
        super().__init__(*args, **kwargs)

    def get_help_record(self, ctx):
        template = self.help or ""
        self.help = help_text(self.registry, template)
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = template


def registry_option(*decls, registry: str, **kwargs):
    """``click.option`` for a :class:`RegistryOption`."""
    return click.option(*decls, cls=RegistryOption, registry=registry, **kwargs)


DEFAULT_BOUND = "crown"  # cmat verify --bound


def check_name(kind: str, value: str, flag: str) -> str:
    """``value`` if ``kind``'s registry holds it, else one :class:`CmatError` line naming the valid ones."""
    names = REGISTRIES[kind]()
    if value not in names:
        raise CmatError(f"{flag}: unknown {kind} {value!r} (valid: {', '.join(names)})")
    return value


NAMES_TABLE = (("method", "`--method` (`run`), `--methods` (`bench`)",
                "built-in ones; `cmat methods` lists plugins too"),
               ("objective", "`--objective` (`run`, `bench`, `transfer-study`), `--objectives` (`transfer`)", ""),
               ("arch", "`--arch` (`run`), `--set model.arch=` elsewhere", ""),
               ("attack", "`--attacks` (`run`, `bench`, `eval`, `transfer`, `transfer-study`)",
                "N = steps, e.g. `pgd10`; `worst` is always added"),
               ("bound", "`--bound` (`verify`)", f"default: {DEFAULT_BOUND}"),
               ("tasks", "`--tasks` (`run`, `bench`, `transfer`, `transfer-study`)", "`cmat tasks` describes each"),
               ("strategy", "`--strategies` (`transfer`, `transfer-study`)", "`tl-K`: the last K layers retrained"))


def names_markdown() -> str:
    """docs/cli.md's table of the names each flag takes, from the registries (built-in methods only,
    so the table does not depend on what plugins are installed)."""
    lines = ["| kind | flag | registered names | default, notes |", "|---|---|---|---|"]
    for kind, flags, note in NAMES_TABLE:
        names = method_names(plugins=False) if kind == "method" else REGISTRIES[kind]()
        default = DEFAULTS[kind]() if kind in DEFAULTS else ""
        notes = "; ".join(x for x in (f"default: {default}" if default else "", note) if x)
        lines.append(f"| {kind} | {flags} | {', '.join(f'`{n}`' for n in names)} | {notes} |")
    return "\n".join(lines) + "\n"


def sequences_markdown() -> str:
    """docs/cli.md's table of the task sequences: tasks, what they are, where their files go."""
    from cmat.tasks.registry import SEQUENCES

    lines = ["| sequence | tasks | what | folders under the data root | offline? |", "|---|---|---|---|---|"]
    for name, info in SEQUENCES.items():
        folders = list(dict.fromkeys(f.rsplit("/", 1)[0] + "/" for f in info.files))
        where = ", ".join(f"`{d}`" for d in folders) or "none"
        offline = "yes" if info.offline else "needs the data (`--download`)"
        lines.append(f"| `{name}` | {info.num_tasks} | {info.description} | {where} | {offline} |")
    return "\n".join(lines) + "\n"


CLI_TABLES: dict = {"names": names_markdown, "sequences": sequences_markdown}


def cli_table(name: str) -> str:
    """The generated table ``name`` of docs/cli.md (``<!-- cmat-cli NAME -->`` blocks)."""
    if name not in CLI_TABLES:
        raise CmatError(f"no CLI table {name!r} (known: {', '.join(CLI_TABLES)})")
    return CLI_TABLES[name]()
