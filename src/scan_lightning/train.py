"""``python -m scan_lightning.train``: the train command (:mod:`scan_lightning.cli.train`)."""
from scan_lightning.cli.train import *  # noqa: F403
from scan_lightning.cli.train import cli

if __name__ == "__main__":
    cli()
