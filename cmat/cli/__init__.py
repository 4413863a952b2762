"""The ``cmat`` command line (click), one module per command group: ``training`` (run, bench),
``results`` (eval, inspect, plot, report), ``tasks`` (tasks, methods, objectives, attacks), ``data``
(data fetch), ``robustness``
(verify, transfer, transfer-study); ``common`` holds the error boundary: user-caused errors are one line on stderr
and exit code 1, never a traceback; ``names`` renders the names a flag takes (methods,
objectives, architectures, attacks, bounds, sequences) from their registries when help is shown."""
from __future__ import annotations

import sys

import click

from cmat.cli.common import CmatGroup
from cmat.cli.data import data
from cmat.cli.results import eval_cmd, inspect, plot, report
from cmat.cli.robustness import transfer, transfer_study, verify
from cmat.cli.tasks import attacks, methods, objectives, tasks
from cmat.cli.training import bench, run


@click.group(cls=CmatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cmat")
def main():
    """Adversarially robust continual learning: CMAT (CPG + adversarial training) and baselines."""
    from cmat.memory import fix_mmap_threshold
    from cmat.provenance import provenance

    fix_mmap_threshold()  # memory flat over long task sequences (cmat/memory.py); CMAT_MALLOC_TUNING=0 skips
    provenance()  # the source tree as this process loaded it, not as it is when a long run ends


for command in (attacks, bench, data, eval_cmd, inspect, methods, objectives, plot, report, run, tasks, transfer,
                transfer_study, verify):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
