"""SHIELD's "verified" count against the sound criteria, on the same interval bounds: SHIELD's
counts images that PGD breaks (so it is not a certificate); the sound ones never do."""
import torch

from cmat.attacks.pgd import PGD
from cmat.bounds.criteria import criteria_bits, criteria_counts, interval_verified, shield_verified


def test_a_box_shield_counts_holds_a_point_classified_otherwise():
    lo, hi, y = torch.tensor([[1.0, 0.5]]), torch.tensor([[3.0, 2.0]]), torch.tensor([0])
    assert shield_verified(lo, hi, y).item() and not interval_verified(lo, hi, y).item()
    assert interval_verified(lo, torch.tensor([[3.0, 0.9]]), y).item()  # 1 > 0.9: sound and proven


def small_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    with torch.no_grad():  # steeper first layer, centred on [0, 1]: predictions that vary and can flip
        net[1].weight.mul_(4)
        net[1].bias.sub_(net[1].weight.sum(1) / 2)
    return net.eval()


def test_shield_counts_images_pgd_breaks_and_the_sound_criteria_never_do():
    net = small_net()
    x = torch.rand(400, 1, 4, 5)
    with torch.no_grad():
        y = net(x).argmax(1)
    for eps in (0.01, 0.05):
        bits = criteria_bits(net, x, y, eps)
        x_adv = PGD(eps, eps / 4, 50, random_start=True)(net, x, y)
        assert (x_adv - x).abs().max() <= eps + 1e-6
        with torch.no_grad():
            broken = net(x_adv).argmax(1) != y
        assert (bits["shield"] & broken).sum() > 0  # "verified" yet misclassified inside the ball
        for sound in ("interval", "margin-ibp", "margin-crown"):
            assert not (bits[sound] & broken).any(), sound
            assert not (bits[sound] & ~bits["correct"]).any(), sound
        assert not (bits["margin-ibp"] & ~bits["interval"]).any()  # the same test, safe against rounding
        assert not (bits["margin-ibp"] & ~bits["margin-crown"]).any()  # CROWN is intersected with IBP
    counts = criteria_counts(net, x, y, 0.05)
    assert counts["shield_not_sound"] == int((bits["shield"] & ~bits["margin-crown"]).sum()) > 0
    assert counts["n"] == 400 and counts["margin-crown"] < counts["shield"]
    with torch.no_grad():
        x_adv = PGD(0.05, 0.05 / 4, 50, random_start=True)(net, x, y)
        robust = net(x_adv).argmax(1) == y
    counts = criteria_counts(net, x, y, 0.05, robust)
    assert counts["shield_broken"] == int((bits["shield"] & ~robust).sum()) > 0
    assert counts["sound_broken"] == 0


def test_criteria_of_a_run_count_what_its_attacks_broke(individual_run):
    """``cmat verify --criteria`` at the run's ε reads the run's per-image ``worst``: SHIELD's
    count minus what an attack broke, and no soundly proven image among the broken."""
    from cmat.outcomes import read_outcomes
    from cmat.verify import criteria_run

    out, _ = individual_run
    report = criteria_run(out, 10_000)
    worst = read_outcomes(out / "eval.h5")["correct"]["worst"]
    total = report["total"]
    assert total["n"] == sum(len(w) for w in worst)
    assert total["sound_broken"] == 0 and total["shield_broken"] <= total["shield"]
    assert total["shield"] - total["shield_broken"] <= sum(int(w.sum()) for w in worst)
    assert "shield_broken" not in criteria_run(out, 10_000, eps=0.5 * report["eps"])["total"]
