"""``python -m lightning_dissect ...`` runs the command line (see :mod:`lightning_dissect.cli`)."""

from lightning_dissect.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
