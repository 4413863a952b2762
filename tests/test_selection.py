"""Model selection never keeps a one-class network over one that classifies: the rule of
:func:`cmat.engine.trainer.select_epoch`, on constructed validation histories and through a
real :meth:`Trainer.fit` whose first epoch is forced to a constant predictor."""
import json
import math

import pytest
import torch
from torch import nn

from cmat.engine import Trainer
from cmat.engine.trainer import chance_floor, majority_share, select_epoch, task_cost
from cmat.tasks import tasks_for_config
from cmat.tblog import RunLogger
from tests.helpers import quick_config


def history(*rows):
    return [{"epoch": e, "val_clean": c, "val_robust": r} for e, (c, r) in enumerate(rows)]


# the HAT task 5 (seed 0): epochs 1-4 a one-class network (0.51 clean = the majority
# share, 0.51 under attack), then a classifier that is less robust than 0.51
HAT_TASK5 = history((0.51, 0.51), (0.51, 0.51), (0.51, 0.51), (0.51, 0.51), (0.93, 0.30), (0.95, 0.39), (0.94, 0.35))


def test_a_one_class_epoch_never_displaces_one_that_classifies():
    kept, alone = select_epoch(HAT_TASK5, "robust", floor=0.51)
    assert alone == 3  # the metric alone keeps the last of the tied one-class epochs
    assert kept == 5  # the rule: the most robust epoch among those that classify
    assert select_epoch(HAT_TASK5, "clean", floor=0.51) == (5, 5)


def test_degenerate_means_not_above_the_majority_share():
    rows = history((0.52, 0.60), (0.90, 0.40))
    assert select_epoch(rows, "robust", floor=0.51)[0] == 0  # 0.52 > 0.51: it classifies, and is more robust
    assert select_epoch(rows, "robust", floor=0.52)[0] == 1  # at the floor: degenerate
    assert majority_share(torch.tensor([0, 1, 1, 2, 1])) == pytest.approx(0.6)
    assert majority_share(torch.tensor([], dtype=torch.long)) == 0.0


def test_the_floor_is_the_last_count_not_significantly_above_a_constant_predictor():
    """57 validation images, 29 of the majority class (digits' task sizes): 29 correct is the
    majority share, and in float32 29/57 lies *above* 29/57 in float64, so a floor at the share
    itself would count a constant predictor as classifying. P(X >= k) for X ~ Bin(57, 29/57):
    36 correct is the first count below 0.05."""
    from scipy.stats import binom

    labels = torch.tensor([0] * 29 + [1] * 28)
    floor = chance_floor(labels)

    def acc(k):  # as Trainer.validate computes it
        return float(torch.tensor([True] * k + [False] * (57 - k)).float().mean())

    first = min(k for k in range(58) if binom.sf(k - 1, 57, 29 / 57) < 0.05)
    assert acc(29) > 29 / 57 and acc(29) <= floor  # the constant predictor: degenerate
    assert acc(first - 1) <= floor < acc(first)
    assert 0.56 < floor < 0.65  # a 0.56 "classifier" (3 images over the share) is not one
    # the old HAT run's task 2 (seed 0, before the fix): the metric alone keeps a one-class epoch;
    # the floor at the share would keep epoch 2 (0.56 clean), the test keeps epoch 1 (0.98 clean)
    rows = history((0.51, 0.46), (0.98, 0.49), (0.56, 0.49), (acc(29), 0.51))
    assert select_epoch(rows, "robust", floor) == (1, 3)
    assert select_epoch(rows, "robust", majority_share(labels))[0] == 3  # float32: "above" the share


def test_without_degenerate_epochs_the_choice_is_the_metrics_latest_best():
    rows = history((0.9, 0.5), (0.95, 0.7), (0.97, 0.6), (0.93, 0.7))
    assert select_epoch(rows, "robust", floor=0.5) == (3, 3)  # ties: the latest, as before the rule
    assert select_epoch(rows, "clean", floor=0.5) == (2, 2)


def test_when_every_epoch_is_degenerate_all_are_candidates():
    rows = history((0.50, 0.40), (0.45, 0.45), (0.50, 0.30))
    assert select_epoch(rows, "robust", floor=0.5) == (1, 1)


def test_last_is_the_last_epoch_whatever_it_scores():
    assert select_epoch(HAT_TASK5[:4], "last", floor=0.51) == (3, 3)
    with pytest.raises(ValueError):
        select_epoch([], "robust", floor=0.5)


class Linear(nn.Module):
    def __init__(self, d: int, k: int):
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_fit_restores_the_epoch_that_classifies_and_records_the_rule(tmp_path):
    """Epoch 0 is a constant predictor (weights zeroed, bias for class 0 after every step): under
    an ε = 0.5 attack it keeps class 0's share, which beats the trained classifier's robust
    accuracy, so the metric alone would keep it; the rule keeps the best later epoch."""
    cfg = quick_config(objective="standard", epochs=3, threat={"eps": 0.5, "alpha": 0.125},
                       train={"select": "robust", "samples": 256, "val_attack_samples": 64, "lr": 0.1})
    task = tasks_for_config(cfg)[0]
    torch.manual_seed(0)
    model = Linear(math.prod(task.input_shape), task.num_classes)
    per_epoch = math.ceil(len(task.train) / cfg.train.batch_size)
    step = [0]

    def constant_first_epoch():
        step[0] += 1
        if step[0] <= per_epoch:
            with torch.no_grad():
                model.fc.weight.zero_()
                model.fc.bias.copy_(torch.eye(task.num_classes)[0] * 10)

    trainer = Trainer(cfg, torch.device("cpu"), RunLogger(tmp_path), progress=False)
    before = (0.0, 0, 0.0, 0.0, 0, 0.0)
    out = trainer.fit(model, list(model.parameters()), task, 0, snapshot=model, after_step=constant_first_epoch)
    trainer.logger.close()
    hist, floor = out["history"], chance_floor(task.val.labels)
    classify = [e for e, r in enumerate(hist) if r["val_clean"] > floor]
    assert hist[0]["val_clean"] <= floor and classify  # epoch 0 is one-class, a later one classifies
    assert hist[0]["val_robust"] > max(r["val_robust"] for r in hist[1:])  # ... and epoch 0 wins on the metric alone
    assert out["best_epoch"] == max(classify, key=lambda e: (hist[e]["val_robust"], e))
    assert trainer.validate(model, task, 0)["clean"] == hist[out["best_epoch"]]["val_clean"]  # its weights restored
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    rule = [e for e in events if e.get("kind") == "selection_rule"]
    assert len(rule) == 1 and rule[0]["by_metric_alone"] == 0 and rule[0]["kept_epoch"] == out["best_epoch"]
    cost = task_cost(trainer, before)
    degenerate = [e for e in range(len(hist)) if e not in classify]
    assert cost["selection_rule"][0]["degenerate_epochs"] == degenerate and trainer.selection_overrides == []
    assert "selection_rule" not in task_cost(trainer, before)  # recorded once, with the task that had it
