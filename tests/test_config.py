"""Configuration: presets, overrides, type checks, one-line errors."""
import pytest

from cmat.config import parse_set, resolve, to_yaml, from_dict
from cmat.errors import CmatError
import yaml


def test_preset_carries_threat_model():
    cfg = resolve("digits-5split")
    assert cfg.threat.eps == pytest.approx(0.2) and cfg.threat.alpha == pytest.approx(0.05)
    cifar = resolve("cifar100-20split")
    assert cifar.threat.eps == pytest.approx(8 / 255) and cifar.model.arch == "vgg16"
    assert cifar.objective.steps == 7


def test_overrides_win_and_fractions_parse():
    cfg = resolve("digits-5split",
                  overrides=parse_set(["threat.eps=8/255", "train.epochs=3", "eval.attacks=clean,pgd10"]))
    assert cfg.threat.eps == pytest.approx(8 / 255)
    assert cfg.train.epochs == 3
    assert cfg.eval.attacks == ["clean", "pgd10"]


def test_user_file_between_preset_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 7, lr: 0.2}\n")
    cfg = resolve("digits-5split", str(f), {"train": {"epochs": 2}})
    assert cfg.train.epochs == 2 and cfg.train.lr == pytest.approx(0.2)


@pytest.mark.parametrize("over", [{"train": {"epochs": "many"}}, {"nope": 1}, {"train": {"bogus": 1}},
                                  {"threat": {"eps": -0.1}}, {"train": {"schedule": "zigzag"}}])
def test_bad_values_are_one_line_errors(over):
    with pytest.raises(CmatError) as err:
        resolve("digits-5split", overrides=over)
    assert "\n" not in str(err.value)


def test_yaml_round_trip():
    cfg = resolve("toy-2task", overrides={"seed": 3})
    again = from_dict(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg
