"""Check the layer contracts (setup.cfg ``[importlinter]``) with ``lint-imports``.

    python scripts/lint_layers.py [SITE]

``lint-imports`` analyses a package as it lies on disk, but ``tasks/`` and ``baselines/`` are
top-level source folders that install as ``cmat.tasks`` and ``cmat.baselines`` (setup.cfg
``package_dir``). So the contracts are checked on the installed layout: SITE (a folder holding
an installed ``cmat``, e.g. ``pip install --no-deps --target SITE dist/cmat-*.whl``) or, without
SITE, a temporary copy of the sources arranged the way setup.cfg installs them.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def stage(site: Path) -> None:
    """Copy cmat/, tasks/ and baselines/ into ``site`` as the installed package ``cmat``."""
    shutil.copytree(ROOT / "cmat", site / "cmat", ignore=IGNORE)
    shutil.copytree(ROOT / "tasks", site / "cmat" / "tasks", ignore=IGNORE)
    shutil.copytree(ROOT / "baselines", site / "cmat" / "baselines", ignore=IGNORE)


def lint(site: Path) -> int:
    """``lint-imports`` with the repository's contracts on the ``cmat`` installed in ``site``."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        print("lint-imports not found: pip install -e '.[test]'", file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([exe, str(ROOT / "setup.cfg"), "--no-cache"], cwd=site, env=env).returncode


def main(argv) -> int:
    ap = argparse.ArgumentParser(description="Check setup.cfg's import-linter contracts on the installed layout.")
    ap.add_argument("site", nargs="?", type=Path, help="a folder holding an installed cmat (default: a staged copy)")
    args = ap.parse_args(argv)
    if args.site is not None:
        if not (args.site / "cmat" / "__init__.py").exists():
            ap.error(f"{args.site} holds no installed cmat (expected {args.site / 'cmat' / '__init__.py'})")
        return lint(args.site.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        stage(Path(tmp))
        return lint(Path(tmp))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
