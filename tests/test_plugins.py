"""Third-party methods through the ``cmat.methods`` entry point: a real distribution (a
``.dist-info`` with ``entry_points.txt`` on ``sys.path``, what ``pip install`` leaves) is found,
listed by ``cmat methods`` and trained by ``cmat run`` and ``cmat bench``; a broken plugin is one
line."""
import json
import textwrap

import pytest
from click.testing import CliRunner

from cmat.cli import main
from cmat.methods import METHODS

PLUGIN = '''
"""An L2 anchor to the previous task's weights (a toy third-party method)."""
from cmat.methods import Method, Option


class L2Anchor(Method):
    """L2 anchor: the run's objective plus lam * |theta - theta_prev|^2 on the shared weights."""

    name = "{name}"
    options = {{"lam": Option(1.0, "weight of the anchor", 0.0, 1e6)}}

    def __init__(self, cfg, seq, device):
        super().__init__(cfg, seq, device)
        self.net = self.new_network(range(len(seq)))
        self.lam = self.opts["lam"]
        self.anchor = None

    def train_task(self, t, task, trainer):
        shared = list(self.net.features.parameters())

        def loss_fn(model, x, y, gen):
            loss, logits = trainer.objective.loss(model, x, y, gen)
            if self.anchor is not None:
                loss = loss + self.lam * sum(((p - a) ** 2).sum() for p, a in zip(shared, self.anchor))
            return loss, logits

        trainer.fit(self.net.task_view(t), shared + list(self.net.heads[t].parameters()), task, t,
                    snapshot=self.net, loss_fn=loss_fn)

    def after_task(self, t, task):
        self.anchor = [p.detach().clone() for p in self.net.features.parameters()]

    def networks(self):
        return [self.net]

    def task_slots(self):
        return [(0, j) for j in range(len(self.seq))]


class NotAMethod:
    name = "broken"
'''


def install(site, dist: str, module: str, entries: dict, name: str = "l2anchor") -> None:
    """What pip leaves for a package: its module and a ``.dist-info`` with METADATA and
    ``entry_points.txt``."""
    (site / f"{module}.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cmat.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


@pytest.fixture
def site(tmp_path, monkeypatch):
    before = dict(METHODS)
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    yield path
    METHODS.clear()
    METHODS.update(before)


def test_a_plugin_method_is_listed_run_and_benched(site, tmp_path):
    install(site, "l2-plugin", "l2plugin", {"l2anchor": "l2plugin:L2Anchor"})
    res = CliRunner().invoke(main, ["methods"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("l2anchor"))
    assert "plugin (l2-plugin)" in line and "L2 anchor" in line
    assert any(ln.startswith("supsup") and "built-in" in ln for ln in res.output.splitlines())
    small = ["--tasks", "toy-2task", "--epochs", "1", "--train-samples", "64", "--eval-samples", "16",
             "--attacks", "clean,pgd10", "--set", "train.val_attack_samples=8", "--no-progress"]
    res = CliRunner().invoke(main, ["run", "--method", "l2anchor", "--out", str(tmp_path / "r"), *small])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "results.json").read_text())["method"] == "l2anchor"
    res = CliRunner().invoke(main, ["bench", "--methods", "l2anchor", "--out", str(tmp_path / "b"),
                                    *small])
    assert res.exit_code == 0, res.output
    assert "| l2anchor |" in (tmp_path / "b" / "bench.md").read_text()


@pytest.mark.parametrize("entries,name,message", [
    ({"broken": "l2plugin:NotAMethod"}, "l2anchor", "is not a cmat.methods.Method subclass"),
    ({"packnet": "l2plugin:L2Anchor"}, "packnet", "a built-in method's name"),
    ({"other": "l2plugin:L2Anchor"}, "l2anchor", "they must agree"),
    ({"missing": "no_such_module:X"}, "l2anchor", "failed to load"),
])
def test_a_broken_plugin_is_one_line(site, entries, name, message):
    install(site, "bad-plugin", "l2plugin", entries, name=name)
    res = CliRunner().invoke(main, ["methods"])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output
