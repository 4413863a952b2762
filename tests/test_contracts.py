"""One contract per kind of plug-in, parametrised over the registries, so a new method or
objective is checked without a test file of its own: what it declares on its class is what
the CLI lists, what validation accepts and refuses, and what the engine reads."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from cmat.attacks.factory import FORMS
from cmat.catalog import BUILT_IN, check_option_keys
from cmat.cli import main
from cmat.config import CERTIFIED_OBJECTIVES
from cmat.errors import CmatError
from cmat.methods import Method, Option, read_options
from cmat.objectives import OBJECTIVES
from cmat.tasks import tasks_for_config
from tests.helpers import quick_config

METHOD_NAMES = sorted(BUILT_IN)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_method_declares_what_the_engine_reads(name):
    cls = BUILT_IN[name]
    assert issubclass(cls, Method) and cls.name == name
    assert isinstance(cls.masked, bool) and isinstance(cls.supports_ddp, bool)
    assert all(isinstance(o, Option) and o.help for o in cls.options.values())
    # every default passes its own check, and the method builds with the defaults
    assert read_options(cls.options, {}) == {k: o.read(k, o.default) for k, o in cls.options.items()}
    cfg = quick_config(method=name)
    cfg.method_options = {}
    method = cls(cfg, tasks_for_config(cfg), torch.device("cpu"))
    assert set(method.opts) == set(cls.options)


@pytest.mark.parametrize("name,key", [(n, k) for n in METHOD_NAMES for k, o in BUILT_IN[n].options.items()
                                      if o.kind == "number"])
def test_every_numeric_option_refuses_values_out_of_its_range_naming_itself(name, key):
    opt = BUILT_IN[name].options[key]
    bad = [float("nan"), True, "x"] + ([opt.hi * 2 + 1] if math.isfinite(opt.hi) else []) + \
        ([opt.lo - 1] if math.isfinite(opt.lo) else []) + ([opt.lo + 0.5] if opt.integer else [])
    for value in bad:
        with pytest.raises(CmatError, match=f"method_options.{key} must be"):
            opt.read(key, value)


def test_cmat_methods_lists_every_declared_option_with_its_default():
    res = CliRunner().invoke(main, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    listed = {r["name"]: r for r in json.loads(res.output)}
    for name in METHOD_NAMES:
        cls = BUILT_IN[name]
        assert listed[name]["masked"] == cls.masked and listed[name]["supports_ddp"] == cls.supports_ddp
        assert {k: v["default"] for k, v in listed[name]["options"].items()} == \
            {k: o.default for k, o in cls.options.items()}
    text = CliRunner().invoke(main, ["methods"]).output
    assert "    prune_levels = 5  (integer [1, 1000])" in text


def test_an_option_no_method_declares_is_one_line_and_another_methods_option_is_not():
    check_option_keys({"tolerance": 0.1, "prune_fraction": 0.5})  # CMAT's and PackNet's: shared presets
    with pytest.raises(CmatError, match="method_options.tolerence is not an option of any method"):
        check_option_keys({"tolerence": 0.1})
    res = CliRunner().invoke(main, ["run", "--tasks", "toy-2task", "--set", "method_options.tolerence=0.1",
                                    "--estimate-only"])
    assert res.exit_code != 0 and "tolerence" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_an_objective_declares_its_capabilities(name):
    cls = OBJECTIVES[name]
    assert cls.name == name and isinstance(cls.supports_ddp, bool) and isinstance(cls.certified, bool)
    assert cls.certified == (name in CERTIFIED_OBJECTIVES)
    cfg = quick_config(objective=name)
    obj = cls(cfg.objective, cfg.threat)
    assert (obj.certificate is not None) == cls.certified
    assert not (cls.supports_ddp and cls.certified)  # a certified loss is two passes per backward


def _concrete(example: str) -> str:
    return example.replace("N", "3").replace("R", "2")


ATTACK_NAMES = [_concrete(n) for form in FORMS for n in form.example.split(", ")]


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_an_attack_form_declares_everything_the_harness_reads(name):
    """Each evaluation name builds, has a label, a rank before ``worst``, a cost, and (an attack)
    keeps its perturbation inside the ε-ball on a tiny model; a proof never counts as an attack."""
    from cmat.attacks.factory import attack_label, attack_passes, column_rank, find_form, make_attack

    form, _ = find_form(name)
    assert form is not None and attack_label(name) and column_rank(name) != column_rank("worst")
    assert attack_passes(name, 4) >= 0 and (name == "clean") == (attack_passes(name, 4) == 0 and
                                                                  name != "certified")
    atk = make_attack(name, 0.1, 0.05, n_classes=4)
    if atk is None or atk.certifies:
        assert name in ("clean", "certified")
        return
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).eval()
    x, y = torch.rand(5, 3, 2, 2), torch.arange(5) % 4
    x_adv = atk(net, x, y, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_an_unknown_attack_is_not_costed_silently():
    from cmat.attacks.factory import attack_passes

    with pytest.raises(CmatError, match="unknown attack 'pgd'"):
        attack_passes("pgd", 10)


@pytest.mark.parametrize("name", sorted(__import__("cmat.bounds.margins", fromlist=["BOUNDS"]).BOUNDS))
def test_a_registered_bound_is_below_the_margin_at_sampled_points(name):
    """Every bound in the registry is sound on a small seeded MLP: its lower bound of the margin
    min_k (f_y − f_k) never exceeds the margin at points sampled in the ball (corners included)."""
    from cmat.bounds import margin_lower_bound, network_ops

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x, y, eps = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]), torch.full((4,), 0.05)
    lower = margin_lower_bound(network_ops(net), x, y, eps, name, time_limit=20.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        u = torch.rand(x.shape, generator=g)
        pts = (x + 0.05 * torch.where(u < 0.25, -1.0, torch.where(u > 0.75, 1.0, 2 * u - 1))).clamp(0, 1)
        with torch.no_grad():
            z = net(pts)
        others = z.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), -float("inf")).max(1).values
        assert bool((lower <= z.gather(1, y[:, None]).squeeze(1) - others + 1e-5).all())


def test_a_new_layer_describes_itself_to_the_bounds_without_an_edit_there():
    """A layer the bounds have never heard of exports itself as plain layers (``bound_layers``);
    its IBP box then contains its outputs at points of the ball."""
    from cmat.bounds import network_ops
    from cmat.bounds.ibp import ibp, input_box
    from cmat.nn.layers import ChannelScale

    class DoubledLinear(torch.nn.Module):  # a method's own layer: 2·(Wx + b)
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Linear(4, 3)

        def forward(self, x):
            return 2 * self.inner(x)

        def bound_layers(self):
            return [self.inner, ChannelScale(torch.full((3,), 2.0))]

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), DoubledLinear()).eval()
    x = torch.rand(3, 1, 2, 2)
    lo, hi = ibp(network_ops(net), *input_box(x, torch.full((3,), 0.1)))
    for _ in range(20):
        with torch.no_grad():
            z = net((x + 0.1 * (2 * torch.rand_like(x) - 1)).clamp(0, 1))
        assert bool((lo <= z + 1e-6).all() and (z <= hi + 1e-6).all())


def test_certified_mask_keeps_every_ibp_proof_and_adds_crowns():
    """The harness's certificate runs IBP first and the costlier bound on the rest only: every
    image IBP proves stays proven, and CROWN proves some IBP cannot, none of them attackable."""
    from cmat.bounds.margins import certified_mask
    from tests.helpers import mlp

    model = mlp((4, 8, 8, 3), seed=1)
    x = torch.rand(64, 1, 2, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = model(x).argmax(1)
    ibp_ok = certified_mask(model, x, y, 0.02, "ibp")  # measured: IBP proves 50 of these, CROWN 61
    crown_ok = certified_mask(model, x, y, 0.02, "crown", max_neurons=None)
    assert ibp_ok.sum() > 0 and bool((crown_ok | ~ibp_ok).all()) and crown_ok.sum() > ibp_ok.sum()
    from cmat.attacks import PGD

    x_adv = PGD(0.02, 0.005, 20)(model, x[crown_ok], y[crown_ok], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert bool((model(x_adv).argmax(1) == y[crown_ok]).all())
