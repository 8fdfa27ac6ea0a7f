"""``python -m scan_lightning.evaluate``: the evaluate command (:mod:`scan_lightning.cli.evaluate`)."""
from scan_lightning.cli.evaluate import *  # noqa: F403
from scan_lightning.cli.evaluate import cli

if __name__ == "__main__":
    cli()
