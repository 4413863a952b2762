"""``python -m cmat`` (and ``torchrun -m cmat``) runs the CLI."""
from cmat.cli import main

main()
