"""GPU fast paths (cmat.accel), their CPU-testable parts: bf16 autocast and channels_last give
the float32 training loss and gradients up to rounding, and a bf16 attack stays in the ε-ball."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmat import accel, estimate
from cmat.config import AccelConfig, ObjectiveConfig, ThreatConfig
from cmat.nn.masked import MaskedMultiHeadNet
from cmat.objectives import make_objective

EPS = 8 / 255
MEAN, STD = [0.5] * 3, [0.25] * 3


def _net():
    torch.manual_seed(0)
    net = MaskedMultiHeadNet("smallcnn", 3, 16, width=0.5)
    net.add_task(0, 4, MEAN, STD, 1.0)
    return net


def _loss_and_grads(cfg: AccelConfig, objective: str):
    net = _net()
    accel.prepare_model(cfg, net)
    obj = make_objective(ObjectiveConfig(name=objective, steps=3), ThreatConfig(eps=EPS, alpha=2 / 255))
    torch.manual_seed(1)
    x, y = torch.rand(32, 3, 16, 16), torch.randint(0, 4, (32,))
    x = accel.prepare_batch(cfg, x)
    view = net.task_view(0).train()
    with accel.autocast(cfg, torch.device("cpu")):
        loss, _ = obj.loss(view, x, y, torch.Generator().manual_seed(0))
    loss.backward()
    return float(loss.detach()), torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def _cos(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


@pytest.mark.parametrize("objective,min_cos", [("standard", 0.99), ("pgd", 0.95)])
def test_bf16_autocast_agrees_with_float32(objective, min_cos):
    # pgd: bf16 input gradients flip the sign of a few attack steps, so the adversarial batch,
    # and with it the gradient, differs a little more than for a clean batch
    ref_loss, ref_grad = _loss_and_grads(AccelConfig(), objective)
    loss, grad = _loss_and_grads(AccelConfig(bf16="on"), objective)
    assert abs(loss - ref_loss) < 0.03 * abs(ref_loss) + 1e-3
    assert _cos(grad, ref_grad) > min_cos
    assert not torch.equal(grad, ref_grad)  # bf16 was really used


def test_bf16_attack_stays_in_the_eps_ball():
    from cmat.attacks import PGD

    net = _net()
    x, y = torch.rand(16, 3, 16, 16), torch.randint(0, 4, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xa = PGD(EPS, 2 / 255, 5)(net.task_view(0), x, y, generator=torch.Generator().manual_seed(0))
    assert xa.dtype == torch.float32
    assert float((xa - x).abs().max()) <= EPS + 1e-6 and xa.min() >= 0 and xa.max() <= 1


def test_channels_last_agrees_with_contiguous():
    ref_loss, ref_grad = _loss_and_grads(AccelConfig(), "standard")
    loss, grad = _loss_and_grads(AccelConfig(channels_last=True), "standard")
    assert abs(loss - ref_loss) < 1e-5
    assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)
    net = accel.prepare_model(AccelConfig(channels_last=True), _net())
    assert net.masked_layers()[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("fp32,bf16,picks", [(2.0, 1.0, True), (1.0, 1.2, False), (1.05, 1.0, False)])
def test_bf16_auto_picks_bf16_only_when_measured_faster(monkeypatch, fp32, bf16, picks):
    from cmat.config import resolve
    from cmat.tasks import tasks_for_config

    monkeypatch.setattr(estimate, "measure_pass_seconds",
                        lambda cfg, task, device, masked=False, steps=3, bf16=False: bf16_s if bf16 else fp32)
    bf16_s = bf16
    cfg = resolve("toy-2task", overrides={"accel": {"bf16": "auto"}})
    choice = estimate.resolve_bf16(cfg, tasks_for_config(cfg)[0], torch.device("cpu"))
    assert choice["bf16"] is picks and choice["speedup"] == pytest.approx(fp32 / bf16)


def test_bf16_auto_resolves_in_a_run_and_is_recorded(tmp_path):
    """A real auto run on this CPU: the choice follows the measured ratio, the run trains in
    that precision and results.json says which and why."""
    from tests.helpers import run_quick

    res = run_quick(tmp_path, method="at-individual", epochs=1, accel={"bf16": "auto"},
                    eval={"attacks": ["clean"], "samples": 20})
    p = res["cost"]["precision"]
    assert p["mode"] == "auto" and p["bf16"] == (p["speedup"] >= estimate.AUTO_MIN_SPEEDUP)


@pytest.mark.parametrize("value,mode", [(True, "on"), (False, "off"), ("auto", "auto"), ("ON", "on")])
def test_bf16_config_values(value, mode):
    from cmat.config import resolve

    assert resolve("toy-2task", overrides={"accel": {"bf16": value}}).accel.bf16 == mode


def test_bad_bf16_value_is_one_line():
    from cmat.config import resolve
    from cmat.errors import CmatError

    with pytest.raises(CmatError, match="accel.bf16 must be off, on or auto"):
        resolve("toy-2task", overrides={"accel": {"bf16": "fast"}})
