"""Masked multi-task layers: effective weights, gradient rules, STE, growth, pruning, store."""
import h5py
import pytest
import numpy as np
import torch
import torch.nn.functional as F

from cmat.nn import build_network
from cmat.nn.masked import PIGGY_THRESHOLD, MaskedConv2d, MaskedLayer, MaskedLinear, MaskedMultiHeadNet
from cmat.store import read_masks, read_state, write_masks, write_state

MEAN, STD = [0.5] * 3, [0.25] * 3


def two_task_net(arch="smallcnn", size=16, grow=1.0, piggy=True):
    torch.manual_seed(0)
    net = MaskedMultiHeadNet(arch, 3, size, width=0.5)
    net.add_task(0, 3, MEAN, STD, 1.0)
    net.prune_owned(0, 0.5)
    net.add_task(1, 4, MEAN, STD, grow)
    if piggy:
        for m in net.masked_layers():
            m.start_piggyback(2)
            with torch.no_grad():  # a non-trivial real mask: about half above the threshold
                m.piggy["2"].copy_(torch.rand(m.weight.shape) * 2 * PIGGY_THRESHOLD)
    return net


def test_effective_weight_formula():
    net = two_task_net()
    m = net.masked_layers()[1]
    m.task = 2
    eff = m.effective_weight(2)
    o, w = m.owner, m.weight.detach()
    sel = (m.piggy["2"].detach() > PIGGY_THRESHOLD)
    expected = w * ((o == 2) | ((o > 0) & (o < 2) & sel))
    assert torch.equal(eff.detach(), expected)
    # task 0 (owner 1) sees its own weights only, zeros where it released them
    assert torch.equal(m.effective_weight(1).detach(), w * (o == 1))


def test_gradients_only_on_owned_weights_and_ste_mask_gradient():
    net = two_task_net()
    net.train()
    x = torch.rand(6, 3, 16, 16)
    loss = F.cross_entropy(net(x, 1), torch.arange(6) % 4)
    loss.backward()
    for m in net.masked_layers():
        g = m.weight.grad
        assert torch.all(g[m.owner != 2] == 0)
        assert g[m.owner == 2].abs().sum() > 0
        # straight-through: d loss / d m = d loss / d W_eff · W on selectable positions, 0 elsewhere
        pg = m.piggy["2"].grad
        selectable = (m.owner > 0) & (m.owner < 2)
        assert torch.all(pg[~selectable] == 0)
        assert pg[selectable].abs().sum() > 0


def test_ste_matches_hand_computation():
    torch.manual_seed(1)
    layer = MaskedLinear(5, 3, bias=True)
    layer.add_task(1, 1.0)
    with torch.no_grad():
        layer.owner[:, :2] = 2  # pretend columns 2.. belong to task 1, columns 0-1 to a task 2
    layer.add_task(2, 1.0)
    layer.start_piggyback(2)
    layer.task = 2
    layer.train()
    x = torch.randn(4, 5)
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    w_grad_full = g.t() @ x  # d/dW_eff
    old = layer.owner == 1
    assert torch.allclose(layer.piggy["2"].grad, (w_grad_full * layer.weight.detach()) * old)


def test_growth_leaves_old_task_bit_identical():
    for arch, size in (("smallcnn", 16), ("resnet18", 16)):
        torch.manual_seed(0)
        net = MaskedMultiHeadNet(arch, 3, size, width=0.25)
        net.add_task(0, 3, MEAN, STD, 1.0)
        net.eval()
        x = torch.rand(4, 3, size, size)
        before = net(x, 0)
        shapes = [tuple(m.weight.shape) for m in net.masked_layers()]
        net.add_task(1, 5, MEAN, STD, 1.5)
        grown = [tuple(m.weight.shape) for m in net.masked_layers()]
        assert grown != shapes
        assert torch.equal(net(x, 0), before)
        assert net(x, 1).shape == (4, 5)
        # new entries belong to the new task
        m = net.masked_layers()[1]
        assert torch.all(m.owner[shapes[1][0]:] == 2)


def test_pruning_releases_exact_fraction_and_zeroes():
    torch.manual_seed(0)
    net = MaskedMultiHeadNet("smallcnn", 3, 16, width=0.5)
    net.add_task(0, 3, MEAN, STD, 1.0)
    owned = [int((m.owner == 1).sum()) for m in net.masked_layers()]
    counts = net.prune_owned(0, 0.6)
    for (k, n), o, m in zip(counts.values(), owned, net.masked_layers()):
        assert n == o and k == round(0.6 * o)
        assert int((m.owner == 0).sum()) == k
        assert torch.all(m.weight[m.owner == 0] == 0)
        kept = m.weight[m.owner == 1].abs().min()
        assert kept > 0


def test_eval_cache_invalidated_by_weight_update():
    net = two_task_net(piggy=False)
    net.eval()
    x = torch.rand(2, 3, 16, 16)
    a = net(x, 1)
    assert torch.equal(net(x, 1), a)
    with torch.no_grad():
        net.masked_layers()[0].weight.add_(0.5)
    assert not torch.equal(net(x, 1), a)


def test_masked_store_round_trip_with_bitpacking(tmp_path):
    net = two_task_net(grow=1.5)
    for m in net.masked_layers():
        m.finish_piggyback(2)
    net.eval()
    x = torch.rand(3, 3, 16, 16)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        g = f.create_group("n")
        write_state(g.create_group("state"), net.state_dict())
        write_masks(g, net)
        sizes = [g["piggyback"].size]  # every task's and layer's bits, bit-packed, in one dataset
    rebuilt = build_network(net.spec)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        rebuilt.load_state_dict(read_state(f["n/state"]))
        read_masks(f["n"], rebuilt)
        assert f["n/owner"].dtype == np.uint8
    rebuilt.eval()
    for a, b in zip(net.masked_layers(), rebuilt.masked_layers()):
        assert torch.equal(a.owner, b.owner)
        sel = (a.owner > 0) & (a.owner < 2)
        assert torch.equal(a.mask_bits(2) & sel, b.mask_bits(2))
    for t in (0, 1):
        assert torch.equal(net(x, t), rebuilt(x, t))
    # packed over selectable positions only: far fewer bytes than one byte per weight
    total = sum(m.weight.numel() for m in net.masked_layers())
    assert sum(sizes) < total / 8


@pytest.mark.parametrize("arch,size", [("smallcnn", 16), ("resnet18", 8)])
def test_plain_export_computes_the_masked_task_and_attacks_fold_it(arch, size):
    from cmat.attacks import PGD
    from cmat.nn.fuse import foldable_pairs

    net = two_task_net(arch, size, grow=1.5)
    x = torch.rand(6, 3, size, size)
    y = torch.randint(0, 4, (6,))
    for t in (0, 1):
        view = net.task_view(t).eval()
        plain = view.plain_equivalent()
        assert not any(isinstance(m, MaskedLayer) for m in plain.modules())
        assert torch.equal(plain(x), view(x))  # the same function, bit for bit
        assert len(foldable_pairs(plain)) == sum(isinstance(m, MaskedConv2d) for m in net.features.modules())
    view = net.task_view(1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = PGD(8 / 255, 2 / 255, 5, random_start=False)(view, x, y)
    b = PGD(8 / 255, 2 / 255, 5, random_start=False, fold_bn=False)(view, x, y)
    assert (a == b).float().mean() > 0.99  # folded export: the same attack up to rounding
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert view.train().plain_equivalent() is view  # training mode: no snapshot export


def test_eval_cache_follows_fused_optimizer_steps():
    """Fused optimisers do not bump version counters; the trainer's step does it for them, so
    the cached eval-mode effective weights never go stale."""
    from cmat.engine import optimizer_step

    net = two_task_net()
    view = net.task_view(1)
    x = torch.rand(4, 3, 16, 16)
    sgd = torch.optim.SGD(net.param_groups(1, 0.0), lr=0.5, fused=True)
    adam = torch.optim.Adam([m.piggy["2"] for m in net.masked_layers()], lr=0.01, fused=True)
    before = view.eval()(x)  # fills the cache
    view.train()
    F.cross_entropy(view(x), torch.tensor([0, 1, 2, 3])).backward()
    optimizer_step(sgd)
    optimizer_step(adam)
    after = view.eval()(x)
    fresh = two_task_net()  # same construction, then the stepped tensors, no cache
    fresh.load_state_dict(net.state_dict())
    for a, b in zip(fresh.masked_layers(), net.masked_layers()):
        a.owner.copy_(b.owner)
    assert not torch.equal(after, before)
    assert torch.equal(after, fresh.task_view(1).eval()(x))
