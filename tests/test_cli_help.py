"""CLI help from the registries: every registered method, objective, architecture, attack, bound,
task sequence and transfer strategy appears in the ``--help`` of every flag that takes it (as a
user sees it, through click's CliRunner); a name registered now appears without a CLI edit; every
flag has help; docs/cli.md's generated tables are current and it documents every command and flag
(and no flag that does not exist)."""
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cmat.cli import main
from cmat.cli.names import REGISTRIES, RegistryOption, cli_table, method_names
from cmat.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
# a flag with one of these names takes names from a registry, on whichever command it appears
REGISTRY_FLAGS = {"--tasks": "tasks", "--method": "method", "--methods": "method", "--objective": "objective",
                  "--objectives": "objective", "--arch": "arch", "--attacks": "attack", "--bound": "bound",
                  "--strategies": "strategy"}


def commands(cmd=main, path=()):
    """``(path, command)`` for every command and subcommand, the group itself first."""
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from commands(cmd.commands[name], path + (name,))


def help_of(path) -> str:
    res = CliRunner().invoke(main, [*path, "--help"], terminal_width=80)
    assert res.exit_code == 0, res.output
    return res.output


def option_help(help_text: str, flag: str) -> str:
    """The help of ``flag`` in a rendered ``--help``, unwrapped (click breaks lines, also at hyphens)."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(flag)}\b", line))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if re.match(r"\s+-", line) or not line.startswith(" " * 10):
            break
        block.append(line)
    return re.sub(r"-\n\s+", "-", re.sub(r"(?<!-)\n\s+", " ", "\n".join(block)))


def registry_options():
    return [(path, p) for path, cmd in commands() for p in cmd.params if isinstance(p, RegistryOption)]


def test_every_flag_that_takes_registered_names_lists_them():
    checked = set()
    for path, cmd in commands():
        for param in cmd.params:
            flag = next((o for o in param.opts if o in REGISTRY_FLAGS), None)
            if flag is None:
                continue
            assert isinstance(param, RegistryOption) and param.registry == REGISTRY_FLAGS[flag], \
                f"cmat {' '.join(path)} {flag}: its help must come from the {REGISTRY_FLAGS[flag]} registry"
            text = option_help(help_of(path), flag)
            names = REGISTRIES[param.registry]()
            missing = [n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
            assert not missing, f"cmat {' '.join(path)} {flag} --help lacks {missing}: {text}"
            checked.add((path[0], flag))
    # the flags the issue named, and one per registry at least
    assert {("run", "--method"), ("run", "--objective"), ("run", "--arch"), ("run", "--tasks"), ("run", "--attacks"),
            ("bench", "--objective"), ("bench", "--methods"), ("verify", "--bound"), ("eval", "--attacks"),
            ("transfer", "--strategies")} <= checked
    assert {"ibp", "crown-ibp"} <= set(REGISTRIES["objective"]()) and "cnn-ibp" in REGISTRIES["arch"]()
    assert len(method_names()) >= 8


def test_defaults_are_named_from_the_configuration():
    run_help = help_of(("run",))
    cfg = RunConfig()
    assert f"default: {cfg.method};" in option_help(run_help, "--method")
    assert f"default: {cfg.tasks};" in option_help(run_help, "--tasks")
    assert "default: pgd)" in option_help(help_of(("bench",)), "--objective")
    arch = option_help(run_help, "--arch")
    assert "vgg16 (cifar100-20split" in arch and "under ibp or crown-ibp" in arch and "cnn-ibp (" in arch
    assert "[default: crown]" in option_help(help_of(("verify",)), "--bound")
    jobs = option_help(help_of(("transfer-study",)), "--jobs")
    from cmat.cli.robustness import STUDY_JOBS_CAP

    assert f"at most {STUDY_JOBS_CAP}" in jobs


def test_a_name_registered_now_appears_in_the_help(monkeypatch):
    from cmat.nn.backbones import ARCHS, smallcnn_features
    from cmat.objectives import OBJECTIVES

    monkeypatch.setitem(OBJECTIVES, "zz-new-objective", OBJECTIVES["pgd"])
    monkeypatch.setitem(ARCHS, "zz-new-arch", smallcnn_features)
    text = help_of(("run",))
    assert "zz-new-objective" in option_help(text, "--objective")
    assert "zz-new-arch" in option_help(text, "--arch")


def test_every_flag_has_help():
    bare = [f"cmat {' '.join(path)} {p.opts[0]}" for path, cmd in commands() for p in cmd.params
            if isinstance(p, click.Option) and not p.help and not p.hidden]
    assert not bare, f"flags without help: {bare}"
    for path, _ in commands():
        help_of(path)  # renders for every command


def test_an_unknown_bound_is_one_line_before_the_run_is_read(tmp_path):
    res = CliRunner().invoke(main, ["verify", str(tmp_path / "no-run"), "--bound", "octagon"])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "octagon" in lines[0] and "alpha-crown" in lines[0], res.output


def test_report_has_no_markdown_flag_that_does_nothing():
    assert "--markdown" not in help_of(("report",))


def test_top_level_help_does_not_load_torch():
    code = ("import sys\nfrom cmat.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH"), out


@pytest.mark.parametrize("table", ["names", "sequences"])
def test_docs_cli_tables_are_generated_from_the_registries(table):
    text = CLI_MD.read_text(encoding="utf-8")
    block = re.search(rf"<!-- cmat-cli {table} -->\n(.*?)<!-- /cmat-cli -->", text, re.S)
    assert block, f"docs/cli.md has no <!-- cmat-cli {table} --> block"
    assert block.group(1) == cli_table(table), \
        "docs/cli.md is stale: run `python scripts/readme_tables.py docs/cli.md`"


def command_sections(text: str) -> dict:
    """``{"run": section text, "tasks show": ...}`` from docs/cli.md's ``### `cmat NAME``` headings."""
    parts = re.split(r"^### `cmat ([^`]+)`\s*$", text, flags=re.M)
    return {name: re.split(r"^#{1,3} ", body, flags=re.M)[0] for name, body in zip(parts[1::2], parts[2::2])}


def test_docs_cli_documents_every_command_and_flag():
    sections = command_sections(CLI_MD.read_text(encoding="utf-8"))
    for path, cmd in commands():
        if not path:
            continue
        name = path[0]  # subcommands (tasks show, data fetch) are documented in their group's section
        assert name in sections, f"docs/cli.md has no section ### `cmat {name}`"
        flags = {o for p in cmd.params for o in p.opts if o.startswith("--")}
        missing = sorted(f for f in flags if not re.search(rf"{re.escape(f)}(?![\w-])", sections[name]))
        assert not missing, f"docs/cli.md's `cmat {name}` section does not mention {missing}"
        if len(path) == 1:
            known = flags | {o for c in getattr(cmd, "commands", {}).values() for p in c.params for o in p.opts}
            # a code span that starts with a flag names one of this command's ("`cmat run --download`" does not)
            stale = sorted(set(re.findall(r"`(--[a-z][\w-]*)", sections[name])) - known - {"--help"})
            assert not stale, f"docs/cli.md's `cmat {name}` section names flags it does not take: {stale}"
