"""Each part of AutoAttack does something on its own: on a small non-robust MLP (sklearn's
digits, 2-class and 10-class heads) APGD-CE, APGD-T (10 classes only: its targeted DLR loss needs
4), FAB-T and Square, each run alone, lower the accuracy and stay inside the ε-ball."""
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from cmat.attacks import AutoAttack
from cmat.errors import CmatError

pytest.importorskip("torchattacks")
EPS = 0.15  # pixels in [0, 1]; the MLP is trained without any defence


def trained_mlp(classes):
    data = load_digits()
    keep = torch.isin(torch.as_tensor(data.target), torch.as_tensor(classes))
    x = torch.as_tensor(data.data, dtype=torch.float32)[keep].view(-1, 1, 8, 8) / 16
    y = torch.as_tensor(data.target)[keep]
    y = torch.searchsorted(torch.as_tensor(sorted(classes)), y)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=gen)
    train, test = order[:-80], order[-80:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                          nn.Linear(32, len(classes)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):  # full batch
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[train]), y[train]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        right = model(x[test]).argmax(1) == y[test]
    return model, x[test][right], y[test][right]


@pytest.mark.parametrize("classes", [(3, 8), tuple(range(10))], ids=["2-class", "10-class"])
def test_every_component_lowers_accuracy_on_its_own(classes):
    model, x, y = trained_mlp(classes)
    assert len(y) >= 60  # the clean model is accurate: every image here is correct
    parts = AutoAttack(EPS, n_classes=len(classes)).components
    assert parts == (["apgd-ce", "apgd-t", "fab-t", "square"] if len(classes) == 10 else ["apgd-ce", "fab-t", "square"])
    fooled = {}
    for part in parts:
        aa = AutoAttack(EPS, n_classes=len(classes), steps=20, n_queries=300, only=[part])
        assert aa.components == [part] and aa.params()["components"] == [part]
        x_adv = aa(model, x, y, generator=torch.Generator().manual_seed(0))
        assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            fooled[part] = int((model(x_adv).argmax(1) != y).sum())
    assert all(k >= 0.1 * len(y) for k in fooled.values()), fooled


def test_a_component_the_head_cannot_run_is_refused():
    with pytest.raises(CmatError, match="at least 4 classes"):
        AutoAttack(0.1, n_classes=2, only=["apgd-t"])
    with pytest.raises(CmatError, match="components are"):
        AutoAttack(0.1, n_classes=10, only=["apgd-dlr"])
