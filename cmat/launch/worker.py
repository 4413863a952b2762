"""``python -m cmat.launch.worker JOB.json``: the process a local launcher starts per run."""
import sys

from cmat.launch.jobs import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
