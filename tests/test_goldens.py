"""Behaviour unchanged by restructuring: bit-for-bit goldens recorded with the code before the
layers were introduced (commit ebe13bc), compared with what the current code computes.

- ``toy-2task-s0-fast.json``: ``cmat run --tasks toy-2task --seed 0 --attacks clean,fgsm,pgd10,pgd40``
  (the default run without AutoAttack, whose 5,000-query Square takes minutes): every number of
  results.json that is not a time, the SHA-256 of every dataset of store.h5 (weights, owner and
  piggyback masks, BN statistics) and eval.h5 (per-image outcomes), and ``cmat verify --bound
  crown --json`` on task 0 (20 images) with its CSV rows.
- ``toy-2task-s0.json`` (marked ``slow``, run by .ci/run): the same for the full default run,
  AutoAttack included.
- ``milp-mlp.json``: critical-ε brackets by MILP, CROWN and α-CROWN on a seeded small MLP (the
  toy network has MaxPool, which the MILP bound refuses; that refusal is checked too).

Digests are made by scripts/golden_digest.py, which reads files only, so the same script
recorded the goldens with the old code. The one edit since: CMAT's decisions gained
``growth_tests`` (the paired test behind each growth decision; the toy run never misses its goal,
so the list is empty) and the key was added to both toy goldens; every number is as recorded. Added
later: ``outcomes`` (eval.h5's per-image outcomes, which the ``eval`` hashes already fixed) and
``cpu``, the fingerprint of the machine that recorded them (an AMD EPYC, AVX-512 with BF16; the
goldens pass bit for bit on it). CPU float arithmetic with the preset's one thread is
deterministic on one CPU kind, so there equality is exact; on another CPU (or with a lowered
``ATEN_CPU_CAPABILITY``) the toy goldens are compared by the statistical rule of tests/drift.py,
and the test warns naming both machines. The MILP golden's brackets come from a node-limited,
clock-free solve (tests/budgets.py) and are compared exactly everywhere.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cmat.cli import main
from tests.budgets import MILP_LIMITS
from tests.drift import fallback_note, outcome_drift, same_cpu, str_to_bits

ROOT = Path(__file__).resolve().parents[1]
GOLDENS = ROOT / "tests" / "goldens"
sys.path.insert(0, str(ROOT / "scripts"))
import golden_digest  # noqa: E402


def milp_case() -> dict:
    """Critical-ε brackets on a seeded 16-12-8-3 ReLU MLP: MILP (exact), CROWN and α-CROWN."""
    from cmat.verify import critical_eps

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                          nn.Linear(8, 3)).eval()
    with torch.no_grad():  # weights of unit scale: decision boundaries inside the unit cube
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 1, generator=torch.Generator().manual_seed(m.in_features))
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    out = {}
    for bound in ("milp", "crown", "alpha-crown"):
        res = critical_eps(model, x, y, eps_max=0.3, bound=bound, iters=8, attack_steps=20, seed=0, **MILP_LIMITS)
        out[bound] = {"certified": res["certified"].tolist(), "attack": res["attack"].tolist(),
                      "unknown": res["unknown"]}
    return out


def _assert_same(fresh: dict, golden: dict, what: str) -> None:
    """Bit for bit on the CPU that recorded the golden (``golden["cpu"]``); elsewhere the
    statistical rule of tests/drift.py on the per-image outcomes (the run's protocol still equal,
    CROWN's certified radii still below the attack's), naming both machines."""
    if same_cpu(golden.get("cpu")):
        for part in golden:
            assert fresh[part] == golden[part], f"{part} differs from the golden recorded before the restructuring"
        return
    fallback_note(golden.get("cpu"), what)
    for key in ("method", "objective", "tasks", "task_names", "threat", "attacks", "eval", "seed"):
        assert fresh["results"][key] == golden["results"][key], f"the run's {key} differs from the golden's"
    decode = lambda outcomes: {c: [str_to_bits(t) for t in tasks] for c, tasks in outcomes.items()}  # noqa: E731
    drift = outcome_drift(decode(fresh["outcomes"]), decode(golden["outcomes"]))
    assert not drift, "per-image outcomes differ significantly from the golden's:\n" + "\n".join(drift)
    for row in fresh.get("verify_crown", {}).get("rows", []):  # sound: certified radius ≤ attack radius
        assert float(row["epsilon_value"]) <= float(row["smallest_sat_value"])


def test_default_run_without_autoattack_matches_the_golden_bit_for_bit(tmp_path, default_toy_run):
    run_dir, _ = default_toy_run  # conftest: the same command, trained once per session
    res = CliRunner().invoke(main, ["verify", str(run_dir), "--task", "0", "--n", "20", "--bound", "crown",
                                    "--json", "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    (tmp_path / "v.json").write_text(res.output)
    fresh = golden_digest.run_digest(run_dir)
    fresh["verify_crown"] = golden_digest.verify_digest(tmp_path / "v.json", tmp_path / "v" / "task0_crown.csv")
    fresh = json.loads(json.dumps(fresh))  # the golden went through JSON (tuples → lists)
    _assert_same(fresh, json.loads((GOLDENS / "toy-2task-s0-fast.json").read_text()), "toy-2task-s0-fast.json")
    # the MILP bound refuses this network (MaxPool), as before, with one line
    res = CliRunner().invoke(main, ["verify", str(run_dir), "--task", "1", "--n", "5", "--bound", "milp"])
    assert res.exit_code == 1 and "no MaxPool" in res.output and "Traceback" not in res.output


def test_milp_crown_and_alpha_crown_brackets_match_the_golden():
    """Exact on the recording CPU; elsewhere (a bound's last bit can flip one bisection verdict)
    every bracket end within one bisection step (0.3 / 2⁸) of the golden's."""
    fresh = json.loads(json.dumps(milp_case()))
    golden = json.loads((GOLDENS / "milp-mlp.json").read_text())
    recorded = golden.pop("cpu")
    assert golden["milp"]["unknown"] == 0  # every check finished: the golden is exact, not a timeout
    if same_cpu(recorded):
        assert fresh == golden
        return
    fallback_note(recorded, "milp-mlp.json", "each bracket end within one bisection step")
    for bound, parts in golden.items():
        assert fresh[bound]["unknown"] == 0
        for end in ("certified", "attack"):
            for a, b in zip(fresh[bound][end], parts[end]):
                assert a == b or abs(a - b) <= 0.3 / 2 ** 8 + 1e-12, (bound, end, a, b)


@pytest.mark.slow
def test_default_run_matches_the_golden_bit_for_bit(tmp_path):
    res = CliRunner().invoke(main, ["run", "--tasks", "toy-2task", "--seed", "0", "--out", str(tmp_path / "run"),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    fresh = json.loads(json.dumps(golden_digest.run_digest(tmp_path / "run")))
    _assert_same(fresh, json.loads((GOLDENS / "toy-2task-s0.json").read_text()), "toy-2task-s0.json")


# record milp-mlp.json: PYTHONPATH=. python tests/test_goldens.py > tests/goldens/milp-mlp.json
if __name__ == "__main__":
    from cmat.provenance import cpu_fingerprint

    print(json.dumps({**milp_case(), "cpu": cpu_fingerprint()}, indent=1))
