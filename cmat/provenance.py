"""Where a result came from: the cmat version, the git commit of the source tree it ran from
(and whether that tree had uncommitted changes to tracked files), torch, Python, the machine and
its CPU (:func:`cpu_fingerprint`: float results are bit-exact on one CPU kind, not across kinds).

:func:`provenance` is recorded in every ``results.json`` (``provenance``) so a committed result
names the code that made it. ``commit`` is None when cmat does not run from a git checkout
(a wheel install) or git is unavailable."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version
from typing import Optional



def source_commit(root: Optional[Path] = None) -> tuple:
    """``(commit, dirty)`` of the git checkout holding cmat's source, or ``(None, None)``."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit or None, bool(status.strip())


# CPU features that decide which float kernels torch and oneDNN run (so their rounding).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
# Variables that lower the kernels torch (ATen) and oneDNN pick; recorded when set. Measured: an AMD
# EPYC Zen 4 with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 reproduces, bit for bit, toy runs
# recorded on an AVX2-only machine, and without them it does not.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_fingerprint() -> dict:
    """``{"model", "family", "model_id", "stepping", "capability", "flags"}``: the CPU's model
    name and its family/model/stepping numbers (/proc/cpuinfo: a virtual machine may show only
    "AMD EPYC", and Zen 3 and Zen 4 both say so), the vector ISA torch dispatches its kernels to
    (``torch.backends.cpu.get_cpu_capability()``, which ``ATEN_CPU_CAPABILITY`` can lower) and
    which of :data:`KERNEL_FLAGS` it has, plus ``env``: any of :data:`KERNEL_ENV` that is set. Two runs of
    one config are bit-exact when their fingerprints (and threads, torch) are equal; a test comparing
    with a recording made elsewhere falls back to a statistical rule."""
    import torch

    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and info:
                break  # the first processor's block is enough
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    number = lambda key: int(info[key]) if info.get(key, "").isdigit() else None  # noqa: E731
    flags = set(info.get("flags", "").split())
    fp = {"model": info.get("model name") or platform.processor() or platform.machine(),
          "family": number("cpu family"), "model_id": number("model"), "stepping": number("stepping"),
          "capability": torch.backends.cpu.get_cpu_capability(), "flags": [f for f in KERNEL_FLAGS if f in flags]}
    lowered = {k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)}
    return {**fp, "env": lowered} if lowered else fp


def describe_cpu(fp: dict) -> str:
    """One line for a fingerprint: ``AMD EPYC family 25 model 17 (AVX512; avx2 fma avx512f …)``."""
    ids = f" family {fp['family']} model {fp['model_id']}" if fp.get("family") is not None else ""
    env = "".join(f", {k}={v}" for k, v in fp.get("env", {}).items())
    return f"{fp.get('model')}{ids} ({fp.get('capability')}; {' '.join(fp.get('flags', [])) or 'no listed flags'}{env})"


def machine_line(provenances: list) -> str:
    """Which machine(s) made a table: CPU fingerprint, torch, threads — bit-exact only there."""
    seen = []
    for prov in provenances:
        cpu = prov.get("cpu")
        text = (describe_cpu(cpu) if cpu else "a CPU not recorded (made before cmat recorded it)") + \
            f", torch {prov.get('torch', '?')}" + (f", {prov['threads']} thread(s)" if "threads" in prov else "")
        if text not in seen:
            seen.append(text)
    return ("Made on " + "; ".join(seen) + ". Another CPU kind rounds differently: a rerun there moves single "
            "images (see docs/results.md, \"Numbers on another machine\").")


@functools.lru_cache(maxsize=None)
def provenance() -> dict:
    """``{"cmat", "commit", "dirty", "torch", "python", "machine", "cpu", "argv"}`` of this process, read
    at the first call and the same for the process's lifetime: the CLI calls it as it starts, so a
    bench that runs for hours records the commit it loaded, whatever was committed meanwhile.
    (Callers must not modify the returned dict.)"""
    commit, dirty = source_commit()
    return {"cmat": _version("cmat"), "commit": commit, "dirty": dirty, "torch": _version("torch"),
            "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}",
            "cpu": cpu_fingerprint(), "argv": [Path(sys.argv[0]).name] + sys.argv[1:]}


def _version(package: str) -> Optional[str]:
    try:
        return version(package)
    except PackageNotFoundError:
        return None
