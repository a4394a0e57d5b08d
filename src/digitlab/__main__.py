"""``python -m digitlab``: the command line (what torchrun runs on every rank)."""

from digitlab.cli import main

main()
