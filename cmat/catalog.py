"""Every method, built-in or plugin, and the lookup by name.

Built-in methods register by being imported here: :mod:`cmat.cpg` (``cmat``) and
:mod:`cmat.baselines` (``packnet``, ``anp-vs``, ``at-finetune``, ``at-individual``, ``supsup``,
``wsn``, ``hat``). **Plugins**: an installed package declares an entry point in the group
``cmat.methods`` whose name is the method's name and whose value is its
:class:`cmat.methods.Method` subclass (``ewc = cmat_ewc:EWC``); it is loaded the first time a
name is looked up or listed (docs/methods.md is the contract). The engine, the bench and the
CLI look methods up here only.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from cmat import cpg  # noqa: F401  (registers cmat)
from cmat.baselines import anp_vs, at_baselines, hat, packnet, supermask  # noqa: F401  (register the baselines)
from cmat.errors import CmatError
from cmat.methods import METHODS, Method, unknown_options
from cmat.objectives import OBJECTIVES

BUILT_IN = dict(METHODS)  # name -> class, before any plugin is loaded
GROUP = "cmat.methods"


def plugin_entry_points() -> list:
    """The installed ``cmat.methods`` entry points, sorted by name."""
    eps = entry_points()
    found = eps.select(group=GROUP) if hasattr(eps, "select") else eps.get(GROUP, ())  # Python 3.9
    return sorted(found, key=lambda ep: ep.name)


def load_plugins(only=None) -> dict:
    """Load the plugin methods not loaded yet (``only``: just that name); name → distribution
    name. A plugin that fails to import, is not a Method subclass, disagrees with its entry-point
    name or takes a built-in name is one :class:`CmatError` line."""
    found = {}
    for ep in plugin_entry_points():
        if only is not None and ep.name != only:
            continue
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]
        found[ep.name] = dist
        if ep.name in BUILT_IN:
            raise CmatError(f"plugin {dist!r} declares method {ep.name!r}, a built-in method's name")
        if ep.name in METHODS:  # loaded before
            continue
        try:
            cls = ep.load()
        except Exception as err:  # a third party's import error, whatever it is
            raise CmatError(f"plugin method {ep.name!r} ({ep.value}, from {dist!r}) failed to load: "
                            f"{type(err).__name__}: {err}") from None
        clobbered = [k for k, c in BUILT_IN.items() if METHODS.get(k) is not c]
        if clobbered:  # the plugin's module registered itself over a built-in method
            METHODS.update({k: BUILT_IN[k] for k in clobbered})
            raise CmatError(f"plugin {dist!r} registers method {clobbered[0]!r}, a built-in method's name")
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise CmatError(f"plugin method {ep.name!r} ({ep.value}) is not a cmat.methods.Method subclass")
        if getattr(cls, "name", None) != ep.name:
            raise CmatError(f"plugin method {ep.name!r} ({ep.value}): the class's name is {cls.name!r}; "
                            "they must agree")
        METHODS[ep.name] = cls
    return found


def available_methods() -> list:
    """The names of every method, built-in and plugin, sorted."""
    load_plugins()
    return sorted(METHODS)


def describe_methods() -> list:
    """Per method, a dict: ``name``, ``source`` (``built-in`` or ``plugin (package)``), ``summary``
    (its docstring's first line), ``masked``, ``supports_ddp`` and ``options`` (key → ``default``,
    ``accepts``, ``help``), all read from the class."""
    plugins = load_plugins()
    out = []
    for name in sorted(METHODS):
        cls = METHODS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append({"name": name, "source": "built-in" if name in BUILT_IN else f"plugin ({plugins.get(name, '?')})",
                    "summary": doc[0] if doc else "", "masked": cls.masked, "supports_ddp": cls.supports_ddp,
                    "options": {k: {"default": o.default, "accepts": o.accepts(), "help": o.help}
                                for k, o in cls.options.items()}})
    return out


def method_class(name: str):
    """The :class:`cmat.methods.Method` subclass registered as ``name`` (one-line error if unknown)."""
    if name not in METHODS:
        load_plugins(only=name)
    if name not in METHODS:
        raise CmatError(f"unknown method {name!r} (valid: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def check_ddp(method: str, objective: str) -> None:
    """One-line refusal of combinations torchrun/DDP cannot wrap: the method and the objective
    must both declare ``supports_ddp`` (a loss that is one forward of the trainer's model)."""
    if not method_class(method).supports_ddp:
        ok = sorted(n for n, c in METHODS.items() if c.supports_ddp)
        raise CmatError(f"torchrun/DDP supports the methods {', '.join(ok)}; "
                        f"{method} computes its loss outside the trainer's model")
    if not OBJECTIVES[objective].supports_ddp:
        ok = [n for n, c in OBJECTIVES.items() if c.supports_ddp]
        raise CmatError(f"torchrun/DDP supports the objectives {', '.join(ok)}; "
                        f"{objective} needs two forwards per backward")


def check_option_keys(method_options: dict) -> None:
    """One-line refusal of a ``method_options`` key that no method declares (a typo). A key of
    another method is accepted: presets and benches share one ``method_options`` among methods,
    and each method reads its own keys. A plugin that declares no options (it reads them
    itself) turns the check off."""
    load_plugins()
    classes = list(METHODS.values())
    if any(not c.options and c.name not in BUILT_IN for c in classes):
        return
    unknown = unknown_options(method_options, classes)
    if unknown:
        declared = sorted({k for c in classes for k in c.options})
        raise CmatError(f"method_options.{unknown[0]} is not an option of any method "
                        f"(options: {', '.join(declared)}; `cmat methods` says whose)")
