"""Truncated, garbage or wrong-schema result files in a bench or study directory: the run or
cell is trained again after one line naming the file, or the command stops with one line —
never a traceback, never a row built from the bad file."""
import json

import pytest
from click.testing import CliRunner

from cmat.cli import main
from cmat.errors import CmatError
from cmat.launch.slurm import read_record
from cmat.rundir import read_results
from tests.helpers import quick_config
from tests.helpers import table

BENCH = ["bench", "--tasks", "toy-2task", "--methods", "at-finetune", "--seeds", "0,1,2", "--epochs", "1",
         "--train-samples", "64", "--eval-samples", "8", "--attacks", "clean,pgd10",
         "--set", "train.val_attack_samples=8", "--no-progress"]


def truncated(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def garbage(path):
    path.write_bytes(b"\x00\xff garbage \x13\x37" * 10)


def wrong_schema_results(path):  # valid JSON, another file's schema: the bench's own bench.json
    path.write_text((path.parent.parent / "bench.json").read_text())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "B"
    res = CliRunner().invoke(main, [*BENCH, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, table(out / "bench.csv")


def test_a_bad_results_json_means_a_rerun_of_that_run_never_a_row_from_it(bench):
    """The issue's reproduction: a truncated results.json made ``cmat bench`` end in a
    JSONDecodeError traceback. Each kind, one per seed: one line, that run again, the same table."""
    out, reference = bench
    for seed, spoil in zip((0, 1, 2), (truncated, garbage, wrong_schema_results)):
        spoil(out / f"at-finetune-s{seed}" / "results.json")
    res = CliRunner().invoke(main, [*BENCH, "--out", str(out)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    for seed in (0, 1, 2):
        lines = [ln for ln in res.output.splitlines() if f"at-finetune-s{seed}/results.json is not a valid" in ln]
        assert len(lines) == 1 and lines[0].endswith(f"running at-finetune-s{seed} again"), res.output
        read_results(out / f"at-finetune-s{seed}")  # rerun: valid again
    assert table(out / "bench.csv") == reference


def test_a_bad_eval_h5_or_slurm_record_is_a_rerun_or_one_line(bench):
    out, reference = bench
    truncated_bytes = (out / "at-finetune-s1" / "eval.h5").read_bytes()
    (out / "at-finetune-s1" / "eval.h5").write_bytes(truncated_bytes[: len(truncated_bytes) // 2])
    res = CliRunner().invoke(main, [*BENCH, "--out", str(out)])
    assert res.exit_code == 0 and "eval.h5 is unreadable or corrupt" in res.output, res.output
    assert res.output.count("running at-finetune-s1 again") == 1 and table(out / "bench.csv") == reference
    # slurm_jobs.json says which jobs may still write: a bad one is one line, not a fresh start
    for spoil in (truncated, garbage, lambda p: p.write_text(json.dumps({"at-finetune-s0": {"id": 3}}))):
        (out / "slurm_jobs.json").write_text(json.dumps({"at-finetune-s0": {"job_id": "7", "digest": "ab",
                                                                            "after": []}}))
        spoil(out / "slurm_jobs.json")
        with pytest.raises(CmatError, match="not a valid record of submitted SLURM jobs.*check squeue"):
            read_record(out / "slurm_jobs.json")
        res = CliRunner().invoke(main, [*BENCH, "--out", str(out)])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        assert "slurm_jobs.json is not a valid record" in res.output and "Traceback" not in res.output
    (out / "slurm_jobs.json").unlink()


def test_cmat_report_on_a_bench_with_a_bad_results_json_is_one_line(tmp_path, bench):
    import shutil

    out = tmp_path / "B"
    shutil.copytree(bench[0], out)
    for spoil in (truncated, garbage, wrong_schema_results):
        shutil.copy(bench[0] / "at-finetune-s1" / "results.json", out / "at-finetune-s1" / "results.json")
        spoil(out / "at-finetune-s1" / "results.json")
        res = CliRunner().invoke(main, ["report", str(out)])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        assert "at-finetune-s1/results.json is not a valid cmat results file" in res.output


def test_read_results_names_what_is_wrong(tmp_path, bench):
    out, _ = bench
    good = json.loads((out / "at-finetune-s2" / "results.json").read_text())
    for spoil, why in ((lambda r: r.pop("summary"), "acc or summary"),
                       (lambda r: r["acc"]["clean"][1].append(0.5), "lower-triangular"),
                       (lambda r: r["summary"]["clean"].update(acc="high"), "summary['clean']"),
                       (lambda r: r["cost"].pop("params_total"), "cost lacks"),
                       (lambda r: r.update(format="cmat-eval"), "format")):
        bad = json.loads(json.dumps(good))
        spoil(bad)
        (tmp_path / "results.json").write_text(json.dumps(bad))
        with pytest.raises(CmatError, match="is not a valid cmat results file: .*" + why.replace("[", r"\[")):
            read_results(tmp_path)
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(CmatError, match="a JSON list, not an object"):
        read_results(tmp_path)


STUDY = {"strategies": ["linear"], "verify_samples": 1, "verify_iters": 1, "progress": False}


def study_config():
    return quick_config(method="at-individual", train={"epochs": 1, "val_attack_samples": 8},
                        eval={"attacks": ["clean", "pgd10"], "samples": 12})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from cmat.transfer_study import run_study

    out = tmp_path_factory.mktemp("bad-study") / "S"
    result = run_study(study_config(), out, say=lambda _: None, **STUDY)
    return out, result


def rows(study_result):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in study_result["rows"]]


def test_a_bad_cell_json_means_that_cell_again_never_a_row_from_it(study):
    from cmat.transfer_study import run_study

    out, first = study

    def wrong_schema_cell(path):  # its key and format, but no per-image outcomes
        record = json.loads(path.read_text())
        record.pop("outcomes")
        path.write_text(json.dumps(record))

    spoiled = {"pgd-linear-pgd": truncated, "standard-linear-pgd": garbage, "none-scratch-pgd": wrong_schema_cell}
    for cell, spoil in spoiled.items():
        spoil(out / "cells" / cell / "cell.json")
    lines = []
    again = run_study(study_config(), out, say=lines.append, **STUDY)
    for cell in spoiled:
        said = [ln for ln in lines if f"cells/{cell}/cell.json" in ln]
        assert len(said) == 1 and said[0].endswith(f"running {cell} again"), lines
    assert sum("reusing the finished cell" in ln for ln in lines) == 3  # the other three
    assert rows(again) == rows(first)


def test_a_bad_source_results_json_means_that_source_again(study):
    from cmat.transfer_study import run_study

    out, first = study

    def wrong_schema_source(path):  # valid JSON of another schema: a cell's record
        path.write_text((out / "cells" / "pgd-linear-pgd" / "cell.json").read_text())

    for spoiled in ({"pgd": truncated, "standard": garbage}, {"pgd": wrong_schema_source}):
        for source, spoil in spoiled.items():
            spoil(out / "sources" / source / "results.json")
        lines = []
        again = run_study(study_config(), out, say=lines.append, **STUDY)
        for source in spoiled:
            said = [ln for ln in lines if f"sources/{source}/results.json is not a valid cmat results file" in ln]
            assert len(said) == 1 and said[0].endswith(f"running {source} again"), lines
        assert rows(again) == rows(first)
