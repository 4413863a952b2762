"""objective.eps_ramp: the training attack's ball grows linearly from 0 over a share of a phase."""
import pytest
import torch
from torch import nn

from cmat.config import ObjectiveConfig, ThreatConfig, resolve
from cmat.errors import CmatError
from cmat.objectives import make_objective


class Spy(nn.Module):
    """A linear classifier that records every input it sees."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


@pytest.mark.parametrize("name", ["pgd", "trades", "fast"])
def test_the_training_ball_grows_linearly_then_stays_at_eps(name):
    torch.manual_seed(0)
    eps = 0.3
    obj = make_objective(ObjectiveConfig(name=name, steps=3, eps_ramp=0.5), ThreatConfig(eps=eps, alpha=0.15))
    obj.total_iters = 8  # ramp over the first 4 iterations: r = 0, 1/4, 2/4, 3/4, then 1
    obj.reset()
    x, y = torch.rand(32, 1, 4, 4) * 0.4 + 0.3, torch.randint(0, 2, (32,))
    reach = []
    for _ in range(8):
        model = Spy()
        obj.loss(model, x, y, torch.Generator().manual_seed(1))
        reach.append(max(float((s - x).abs().max()) for s in model.seen))
    for i, r in enumerate(reach):
        bound = eps * min(i / 4, 1.0)
        assert r <= bound + 1e-6, (i, r, bound)  # never outside the ramped ball
        if i >= 4:
            assert r > 0.5 * eps  # the full ball is used after the ramp
    assert reach[0] == 0.0  # r = 0: the clean batch
    obj.reset(warm=True)  # a warm phase (growth, compaction) starts at the full ball
    model = Spy()
    obj.loss(model, x, y, torch.Generator().manual_seed(1))
    assert max(float((s - x).abs().max()) for s in model.seen) > 0.5 * eps


def test_eps_ramp_is_validated_and_refused_where_it_has_no_meaning():
    with pytest.raises(CmatError, match="eps_ramp"):
        resolve("toy-2task", overrides={"objective": {"eps_ramp": 1.5}})
    with pytest.raises(CmatError, match="eps_ramp applies to"):
        resolve("toy-2task", overrides={"objective": {"name": "free", "eps_ramp": 0.3}})
