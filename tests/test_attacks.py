"""Attacks: torchattacks parity, ε-ball, mode/gradient hygiene, seeding, strength, BN folding."""
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cmat.attacks import FGSM, PGD, AutoPGD, cw_margin, make_attack
from cmat.errors import CmatError
from cmat.nn import MultiHeadNet
from cmat.nn.fuse import fold_batchnorm

EPS, ALPHA = 8 / 255, 2 / 255
SIGNAL = 0.06  # brightness of the class quadrant: learnable in seconds, breakable at ε = 8/255


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and lose a lot when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(seed=0, classes=4):
    torch.manual_seed(seed)
    net = MultiHeadNet("smallcnn", 3, 16, [classes], [[0.5] * 3], [[0.25] * 3], width=0.5)
    randomize_bn(net)
    return net


def randomize_bn(net, seed=1):
    """Non-trivial BN statistics and affine parameters, so folding and eval mode matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def data(n=32, classes=4, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def separable(n, seed):
    """4 classes: one quadrant brighter by ``SIGNAL`` on uniform noise in [0.25, 0.75]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.25 + 0.5 * torch.rand(n, 3, 16, 16, generator=g)
    for k in range(4):
        r, c = divmod(k, 2)
        x[y == k, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += SIGNAL
    return x, y


@pytest.fixture(scope="module")
def trained():
    """The tiny net trained (standard, ~2 s) on :func:`separable`; returns (view, x_test, y_test)."""
    net = tiny_net(3)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = separable(512, 0)
    net.train()
    for epoch in range(6):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            F.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    net.zero_grad(set_to_none=True)
    view = net.task_view(0).eval()
    xt, yt = separable(200, 1)
    return view, xt, yt


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


ALL_ATTACKS = {
    "pgd": lambda: PGD(EPS, ALPHA, 5),
    "pgd-no-rs": lambda: PGD(EPS, ALPHA, 5, random_start=False),
    "pgd-cw": lambda: PGD(EPS, ALPHA, 5, loss="cw"),
    "pgd-restarts": lambda: PGD(EPS, ALPHA, 3, restarts=3),
    "pgd-unfolded": lambda: PGD(EPS, ALPHA, 5, fold_bn=False),
    "fgsm": lambda: FGSM(EPS),
    "fgsm-fast": lambda: FGSM(EPS, random_start=True, alpha=1.25 * EPS),
    "fgsm-cw": lambda: FGSM(EPS, loss="cw"),
}


# ----------------------------------------------------------------------------- torchattacks parity

def test_pgd_bit_identical_to_torchattacks():
    ta = pytest.importorskip("torchattacks")
    view = tiny_net().task_view(0).eval()
    x, y = data()
    ours = PGD(EPS, ALPHA, 7, random_start=False, fold_bn=False)(view, x, y)
    theirs = ta.PGD(view, eps=EPS, alpha=ALPHA, steps=7, random_start=False)(x, y)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, x)


def test_pgd_random_start_bit_identical_to_torchattacks_on_global_rng():
    ta = pytest.importorskip("torchattacks")
    view = tiny_net().task_view(0).eval()
    x, y = data()
    torch.manual_seed(5)
    ours = PGD(EPS, ALPHA, 4, fold_bn=False)(view, x, y)  # generator=None: the global generator
    torch.manual_seed(5)
    theirs = ta.PGD(view, eps=EPS, alpha=ALPHA, steps=4, random_start=True)(x, y)
    assert torch.equal(ours, theirs)


def test_fgsm_bit_identical_to_torchattacks():
    ta = pytest.importorskip("torchattacks")
    view = tiny_net().task_view(0).eval()
    x, y = data()
    assert torch.equal(FGSM(EPS, fold_bn=False)(view, x, y), ta.FGSM(view, eps=EPS)(x, y))


def test_folded_pgd_close_to_unfolded():
    view = tiny_net().task_view(0).eval()
    x, y = data()
    a = PGD(EPS, ALPHA, 5, random_start=False)(view, x, y)
    b = PGD(EPS, ALPHA, 5, random_start=False, fold_bn=False)(view, x, y)
    # the same attack up to rare sign flips of near-zero gradient entries
    assert (a == b).float().mean() > 0.99


# ----------------------------------------------------------------------------- contracts

@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_inside_eps_ball_and_image_range(name):
    view = tiny_net().task_view(0).eval()
    x, y = data()
    x[:4] = 0.0  # saturated pixels: the [0, 1] clip must bind
    x[4:8] = 1.0
    x_adv = ALL_ATTACKS[name]()(view, x, y, generator=gen())
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= EPS + 1e-7
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("name", ["pgd", "pgd-restarts", "fgsm-fast"])
def test_mode_restored_and_no_parameter_gradients(name):
    net = tiny_net()
    view = net.task_view(0)
    x, y = data()
    bn = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    stats = [b.running_mean.clone() for b in bn]
    for setup in ("train", "eval", "mixed"):
        view.train(setup != "eval")
        if setup == "mixed":
            bn[1].eval()
            net.heads.eval()
        before = {n: m.training for n, m in view.named_modules()}
        ALL_ATTACKS[name]()(view, x, y, generator=gen())
        assert {n: m.training for n, m in view.named_modules()} == before
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(b.running_mean, s) for b, s in zip(bn, stats))  # eval mode: stats untouched


def test_existing_gradients_untouched():
    net = tiny_net()
    p0 = next(net.parameters())
    p0.grad = torch.ones_like(p0)
    PGD(EPS, ALPHA, 3)(net.task_view(0), *data(), generator=gen())
    assert torch.equal(p0.grad, torch.ones_like(p0))
    assert all(p.grad is None for p in list(net.parameters())[1:])


def test_works_under_no_grad_and_inference_mode():
    view = tiny_net().task_view(0).eval()
    x, y = data()
    ref = PGD(EPS, ALPHA, 3)(view, x, y, generator=gen())
    with torch.no_grad():
        assert torch.equal(PGD(EPS, ALPHA, 3)(view, x, y, generator=gen()), ref)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        assert torch.equal(PGD(EPS, ALPHA, 3)(view, xi, yi, generator=gen()), ref)


# ----------------------------------------------------------------------------- seeding

@pytest.mark.parametrize("name", ["pgd", "pgd-restarts", "fgsm-fast"])
def test_seeded_generator_is_bit_identical_and_seed_matters(name):
    view = tiny_net().task_view(0).eval()
    x, y = data()
    atk = ALL_ATTACKS[name]()
    state = torch.get_rng_state()
    a = atk(view, x, y, generator=gen(1))
    b = atk(view, x, y, generator=gen(1))
    c = atk(view, x, y, generator=gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not used


# ----------------------------------------------------------------------------- strength

def test_strength_ordering(trained):
    view, x, y = trained
    clean = acc(view, x, y)
    # ε = 4/255 keeps the attacks partially successful and α = ε/8 keeps PGD-10 short of
    # converging (clean 1.0, PGD-10 ≈ 0.87, PGD-40 ≈ 0.78), so the ordering has margins
    pgd10 = acc(view, PGD(4 / 255, 0.5 / 255, 10)(view, x, y, generator=gen(7)), y)
    pgd40 = acc(view, PGD(4 / 255, 0.5 / 255, 40)(view, x, y, generator=gen(7)), y)
    fgsm = acc(view, FGSM(4 / 255)(view, x, y), y)
    assert clean > 0.9
    assert pgd40 < pgd10 < clean
    assert fgsm < clean


def test_restarts_never_weaker(trained):
    view, x, y = trained
    # a weak attack (3 steps of ε/8) so that later restarts have something left to find
    one = PGD(4 / 255, 0.5 / 255, 3, restarts=1)(view, x, y, generator=gen(3))
    many = PGD(4 / 255, 0.5 / 255, 3, restarts=4)(view, x, y, generator=gen(3))
    with torch.no_grad():
        logits_one, logits_many = view(one), view(many)
    fooled_one, fooled_many = logits_one.argmax(1) != y, logits_many.argmax(1) != y
    assert bool((fooled_many | ~fooled_one).all())  # fooled with restarts ⊇ fooled with one
    unfooled = ~fooled_many  # ... and where none fooled, the kept loss is never lower
    loss_one = F.cross_entropy(logits_one, y, reduction="none")
    loss_many = F.cross_entropy(logits_many, y, reduction="none")
    assert bool((loss_many[unfooled] >= loss_one[unfooled]).all())
    assert 0 < fooled_one.sum() <= fooled_many.sum() < len(y)  # here: 2 → 4 of 200
    assert not torch.equal(many, one)  # later restarts replaced some examples
    # examples fooled by the first restart keep restart 0's adversarial, which is restarts=1's
    assert torch.equal(many[fooled_one], one[fooled_one])


def test_cw_margin():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    assert torch.equal(cw_margin(z, torch.tensor([1, 0])), torch.tensor([-1.0, -5.0]))
    assert torch.equal(cw_margin(z, torch.tensor([0, 2])), torch.tensor([2.0, 6.0]))


# ----------------------------------------------------------------------------- errors and names

@pytest.mark.parametrize("build", [
    lambda: PGD(eps=-1 / 255), lambda: PGD(steps=0), lambda: PGD(alpha=0), lambda: PGD(restarts=0),
    lambda: PGD(loss="hinge"), lambda: PGD(restarts=2, random_start=False), lambda: FGSM(eps=float("nan")),
    lambda: make_attack("pgdx", EPS, ALPHA), lambda: make_attack("pgd0", EPS, ALPHA),
    lambda: make_attack("bim", EPS, ALPHA), lambda: make_attack("pgd10", EPS, None),
])
def test_bad_arguments_raise_one_line_cmat_error(build):
    with pytest.raises(CmatError) as err:
        build()
    assert "\n" not in str(err.value) and str(err.value)


def test_unknown_name_lists_valid_forms():
    with pytest.raises(CmatError, match="pgdN-cw"):
        make_attack("pgd-10", EPS, ALPHA)


def test_inputs_outside_unit_interval_rejected():
    view = tiny_net().task_view(0)
    x, y = data()
    with pytest.raises(CmatError, match=r"\[0, 1\]"):
        PGD()(view, (x - 0.5) / 0.25, y)


def test_make_attack_names():
    assert make_attack("clean", EPS, ALPHA) is None
    fgsm = make_attack("fgsm", EPS, ALPHA)
    assert isinstance(fgsm, FGSM) and fgsm.params()["alpha"] == EPS and not fgsm.random_start
    p7 = make_attack("pgd7", EPS, 3 / 255)
    assert p7.params() == {"attack": "PGD", "eps": EPS, "alpha": 3 / 255, "steps": 7,
                           "random_start": True, "restarts": 1, "loss": "ce"}
    assert make_attack("PGD40-cw", EPS, ALPHA).params()["loss"] == "cw"
    assert repr(make_attack("pgd10", EPS, ALPHA)) == \
        "PGD(eps=8/255, alpha=2/255, steps=10, random_start=True, restarts=1, loss='ce')"
    for atk in (fgsm, p7):
        assert {"eps", "alpha", "steps"} <= set(atk.params())


def test_apgd_missing_torchattacks(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(CmatError, match="pip install cmat\\[test\\]"):
        make_attack("apgd-ce", EPS, ALPHA)


# ----------------------------------------------------------------------------- APGD

@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
def test_apgd_wrapper(loss):
    pytest.importorskip("torchattacks")
    net = tiny_net()
    view = net.task_view(0).train()
    x, y = data(16)
    atk = AutoPGD(EPS, steps=5, loss=loss, n_classes=4)
    state = torch.get_rng_state()
    a = atk(view, x, y, generator=gen(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, atk(view, x, y, generator=gen(0)))
    assert (a - x).abs().max() <= EPS + 1e-7 and a.min() >= 0 and a.max() <= 1
    assert all(p.grad is None for p in net.parameters())
    assert all(m.training for m in view.modules())
    assert acc(view.eval(), a, y) <= acc(view, x, y)


def test_apgd_names_and_class_checks():
    pytest.importorskip("torchattacks")
    assert make_attack("apgd-t", EPS, ALPHA, n_classes=10).params()["n_classes"] == 10
    assert make_attack("apgd-ce", EPS, ALPHA).params()["alpha"] is None
    for n_classes in (None, 2):
        with pytest.raises(CmatError):
            make_attack("apgd-t", EPS, ALPHA, n_classes=n_classes)


# ----------------------------------------------------------------------------- BN folding

@pytest.mark.parametrize("arch,size,width", [("smallcnn", 16, 0.5), ("vgg16", 32, 0.25), ("resnet18", 32, 0.25)])
def test_folded_network_matches_and_original_untouched(arch, size, width):
    torch.manual_seed(0)
    net = MultiHeadNet(arch, 3, size, [5, 3], [[0.5] * 3] * 2, [[0.25] * 3] * 2, width=width)
    randomize_bn(net)
    view = net.task_view(1).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modules = dict(net.named_modules())
    fused = fold_batchnorm(view)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(8, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(fused(x), view(x), rtol=1e-4, atol=1e-5)
    assert dict(net.named_modules()) == modules
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in view.modules()) > 0


def test_fold_skips_train_mode_and_batch_statistics_wrappers():
    net = tiny_net()
    assert any(isinstance(m, nn.BatchNorm2d) for m in fold_batchnorm(net.task_view(0).train()).modules())

    class BatchStats(nn.Module):  # switches BN to batch statistics inside its forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            bns = [m for m in self.inner.modules() if isinstance(m, nn.BatchNorm2d)]
            for m in bns:
                m.train(True)
            try:
                return self.inner(x)
            finally:
                for m in bns:
                    m.train(False)

    wrapped = BatchStats(net.task_view(0)).eval()
    assert fold_batchnorm(wrapped) is wrapped


def test_fold_pairs_traced_once_and_retraced_when_modes_change(monkeypatch):
    from cmat.nn import fuse

    calls = []
    real = fuse.foldable_pairs
    monkeypatch.setattr(fuse, "foldable_pairs", lambda m: calls.append(1) or real(m))
    view = tiny_net().task_view(0).eval()
    first = fuse.fold_batchnorm(view)
    second = fuse.fold_batchnorm(view)
    assert len(calls) == 1 and first is not view and second is not view
    view.train()  # training flags are part of the signature: BN in train mode must not fold
    assert any(isinstance(m, nn.BatchNorm2d) for m in fuse.fold_batchnorm(view).modules())
    assert len(calls) == 2


def test_fold_leaves_shared_and_untraceable_modules_alone():
    conv, bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
    twice = nn.Sequential(conv, bn, nn.ReLU(), conv, bn).eval()  # the same pair called twice
    assert fold_batchnorm(twice) is twice

    class DataDependent(nn.Module):  # fx cannot trace a branch on tensor values
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3))

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else -self.body(x)

    model = DataDependent().eval()
    assert fold_batchnorm(model) is model
    x, y = data(4, classes=3, size=8)
    x_adv = PGD(EPS, ALPHA, 2)(nn.Sequential(model, nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).eval(), x, y,
                               generator=gen())
    assert (x_adv - x).abs().max() <= EPS + 1e-7


def test_broadcast_input_gradient():
    class ColourSums(nn.Module):  # ∇ₓ of a sum over pixels comes back as a stride-0 view
        def forward(self, x):
            return x.sum(dim=(2, 3))

    x, y = data(4, classes=3, size=8)
    for atk in (PGD(EPS, ALPHA, 2), FGSM(EPS)):
        x_adv = atk(ColourSums(), x, y, generator=gen())
        assert (x_adv - x).abs().max() <= EPS + 1e-7 and not torch.equal(x_adv, x)


def test_the_one_pgd_kernel_keeps_each_sample_in_its_own_ball():
    """``ascend`` with a per-sample ε (verify's bisection) moves every image by at most its own ε
    (0 → not at all) and stays in [0, 1]; with a callable loss (TRADES' KL) it ascends that loss."""
    from cmat.attacks import ascend
    from cmat.objectives import make_objective
    from cmat.config import resolve

    net = tiny_net().task_view(0).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8, generator=gen), torch.arange(6) % 4
    eps = torch.tensor([0.0, 0.01, 0.03, 0.1, 0.3, 1.0]).view(-1, 1, 1, 1)
    x_adv = ascend(net, x, y, x.clone(), eps, eps / 4, 10, "ce")
    moved = (x_adv - x).abs().flatten(1).amax(1)
    assert moved[0] == 0 and bool((moved <= eps.flatten() + 1e-7).all()) and moved[3:].min() > 0
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    cfg = resolve("toy-2task", overrides={"objective": {"name": "trades"}})
    trades = make_objective(cfg.objective, cfg.threat)
    xt = trades._adversary(net, x, torch.Generator().manual_seed(1))
    assert (xt - x).abs().max() <= cfg.threat.eps + 1e-7
    p_clean = F.softmax(net(x), 1)

    def kl(z):
        return F.kl_div(F.log_softmax(z, 1), p_clean, reduction="sum")

    assert kl(net(xt)) > kl(net((x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
                                .clamp(0, 1)))
