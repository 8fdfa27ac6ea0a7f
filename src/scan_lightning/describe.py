"""``python -m scan_lightning.describe``: the describe command (:mod:`scan_lightning.cli.describe`)."""
from scan_lightning.cli.describe import *  # noqa: F403
from scan_lightning.cli.describe import cli

if __name__ == "__main__":
    cli()
