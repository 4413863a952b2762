#!/usr/bin/env python
"""Reproduce the paper comparison: CIFAR-100 in 20 superclass tasks, every method, PGD-10 and
PGD-40 at ε = 8/255 (α = 2/255), then the plots. Meant for a GPU machine:

    python scripts/reproduce_paper.py --out runs/paper --data-root ~/data --download [--seeds 0,1,2]

It is a thin wrapper over ``cmat bench`` and ``cmat plot`` with the ``cifar100-20split``
preset (CPG's VGG16-BN, PGD-7 training); extra ``--set key=value`` pass through.
"""
import argparse
import sys

from cmat.cli import main as cmat_main

METHODS = "cmat,packnet,anp-vs,at-finetune,at-individual"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/paper")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs per task")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args(argv)
    bench = ["bench", "--tasks", "cifar100-20split", "--methods", args.methods, "--out", args.out,
             "--seeds", args.seeds, "--attacks", "clean,fgsm,pgd10,pgd40"]
    if args.data_root:
        bench += ["--data-root", args.data_root]
    if args.download:
        bench.append("--download")
    if args.epochs:
        bench += ["--epochs", str(args.epochs)]
    for s in args.sets:
        bench += ["--set", s]
    for command in (bench, ["plot", args.out] + (["--data-root", args.data_root] if args.data_root else [])):
        try:
            cmat_main(command, standalone_mode=True)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                return int(exit_.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
