"""HAT, SupSup and WSN: SupSup and WSN forget nothing, bit for bit; SupSup's weights never
train; HAT's forgetting is measured; every store reloads to the reported accuracies; every
objective trains them."""
import json

import numpy as np
import pytest
import torch

import cmat
from cmat.catalog import method_class
from cmat.engine import Run, Trainer
from cmat.evaluate import build_attacks, evaluate_task
from cmat.outcomes import read_outcomes
from cmat.tasks import tasks_for_config
from cmat.tblog import RunLogger
from tests.helpers import quick_config

SMALL = {"train": {"samples": 192, "val_attack_samples": 16}, "eval": {"attacks": ["clean", "pgd10"], "samples": 40}}


def small_config(method, objective="pgd", epochs=2, **over):
    cfg = quick_config(method=method, objective=objective, epochs=epochs, **SMALL)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", ["supsup", "wsn"])
def test_supermask_methods_forget_nothing_bit_for_bit(name):
    """Task 1's logits, every parameter and buffer it uses, are identical after task 2 trains."""
    cfg = small_config(name)
    seq = tasks_for_config(cfg)
    method = method_class(name)(cfg, seq, "cpu")
    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(None), progress=False)
    x, _ = seq[0].test.tensors(torch.arange(64))
    for t in range(2):
        method.before_task(t, seq[t])
        method.train_task(t, seq[t], trainer)
        method.after_task(t, seq[t])
        if t == 0:
            before = outputs(method.model_for(0), x)
            layers = method.net.masked_layers()
            eff0 = [m.effective_weight(1).clone() for m in layers]
            bits0 = [m.mask_bits(1).clone() if 1 in m.bits else None for m in layers]
            density0 = [float((m.owner == 1).sum() + (m.mask_bits(1).sum() if 1 in m.bits else 0)) /
                        m.weight[: m.shapes[1][0], : m.shapes[1][1]].numel() for m in layers]
    assert torch.equal(outputs(method.model_for(0), x), before)
    for m, e, b in zip(method.net.masked_layers(), eff0, bits0):
        assert torch.equal(m.effective_weight(1), e)
        assert b is None or torch.equal(m.mask_bits(1), b)
    assert all(abs(d - method.density) < 0.01 for d in density0)  # the supermask keeps `density` of a slice
    assert not torch.equal(outputs(method.model_for(1), seq[1].test.tensors(torch.arange(8))[0]),
                           outputs(method.model_for(0), seq[1].test.tensors(torch.arange(8))[0]))


def test_supsup_weights_are_a_fixed_signed_constant_network():
    cfg = small_config("supsup")
    seq = tasks_for_config(cfg)
    method = method_class("supsup")(cfg, seq, "cpu")
    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(None), progress=False)
    method.before_task(0, seq[0])
    start = [m.weight.detach().clone() for m in method.net.masked_layers()]
    method.train_task(0, seq[0], trainer)
    method.after_task(0, seq[0])
    for m, w0 in zip(method.net.masked_layers(), start):
        assert torch.equal(m.weight, w0)  # only scores, BN, biases and the head learned
        c = (2.0 / (method.density * m.weight[0].numel())) ** 0.5
        assert torch.allclose(m.weight.abs(), torch.full_like(m.weight, c))


@pytest.fixture(scope="module", params=["supsup", "wsn", "hat"])
def finished(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    Run(small_config(request.param, epochs=3), out, progress=False, verbose=False).execute()
    return request.param, out, json.loads((out / "results.json").read_text())


def test_store_reloads_to_the_reported_accuracies(finished):
    name, out, res = finished
    run = cmat.load(out)
    cfg = small_config(name, epochs=3)
    seq = tasks_for_config(cfg)
    outcomes = read_outcomes(out / "eval.h5")
    for j in range(len(seq)):
        attacks = build_attacks(cfg.eval.attacks, cfg.threat.eps, cfg.threat.alpha, seq[j].num_classes)
        again = evaluate_task(run.model(j), seq[j].test, attacks, seq[j].num_classes, cfg.seed, j,
                              cfg.eval.samples, cfg.eval.batch_size, "cpu")
        for col in ("clean", "pgd10", "worst"):
            assert again[col]["acc"] == pytest.approx(res["acc"][col][-1][j], abs=0)
            assert np.array_equal(again[col]["correct"], outcomes["correct"][col][j])


def test_forgetting_is_measured_and_masks_are_stored_bit_packed(finished):
    name, out, res = finished
    acc = res["acc"]["clean"]
    assert len(acc) == 2 and acc[1][0] is not None  # task 1 evaluated again after task 2
    bwt = res["summary"]["clean"]["bwt"]
    if name in ("supsup", "wsn"):
        assert bwt == 0.0 and acc[1][0] == acc[0][0]
    assert res["summary"]["clean"]["acc"] > 0.3  # learned something (4 classes)
    import h5py
    from cmat.store.tensors import piggyback_index, state_index
    with h5py.File(out / "store.h5") as f:
        g = f["networks/0"]
        entries = state_index(g["state"])
        if name == "hat":
            gates = [dtype for n, dtype, _ in entries if ".gate" in n]
            assert gates and set(gates) == {"bool"} and "bool" in g["state"]  # bit-packed in state/bool
        else:
            assert len({j for j, _, _ in piggyback_index(g)}) == 2  # per task: its bits over earlier weights
        assert not any("scores" in n or ".emb." in n for n, _, _ in entries)  # training-only state dropped


@pytest.mark.parametrize("name,objective", [("supsup", "crown-ibp"), ("wsn", "fast"), ("hat", "crown-ibp"),
                                            ("hat", "trades")])  # pgd: the runs above; each family once
def test_every_objective_trains_them(name, objective, tmp_path):
    cfg = quick_config(method=name, objective=objective, epochs=1,
                       train={"samples": 64, "val_attack_samples": 8}, eval={"attacks": ["clean"], "samples": 8})
    res = Run(cfg, tmp_path, progress=False, verbose=False).execute()
    assert res["objective"] == objective and len(res["acc"]["clean"]) == 2


def test_supermask_score_gradient_is_the_straight_through_gradient_of_abs_scores():
    """∂L/∂S = ∂L/∂(W ⊙ M) ⊙ W ⊙ sign(S): a step along −∂L/∂S lowers the loss of the relaxed
    mask W ⊙ |S| (checked against autograd through |S|), and the weight gradient is masked."""
    from cmat.nn.mask_algebra import SupermaskWeight, top_fraction

    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    s = torch.randn(6, 5, requires_grad=True)
    own = torch.rand(6, 5) > 0.3
    mask = top_fraction(s, 0.5)
    assert int(mask.sum()) == 15 and bool((s.abs()[mask].min() >= s.abs()[~mask].max()))
    g = torch.randn(6, 5)
    (SupermaskWeight.apply(w, s, own, mask) * g).sum().backward()
    s2 = s.detach().clone().requires_grad_(True)
    (w.detach() * s2.abs() * g).sum().backward()  # the relaxation edge-popup's STE follows
    assert torch.allclose(s.grad, s2.grad)
    assert torch.equal(w.grad, g * (mask & own))
