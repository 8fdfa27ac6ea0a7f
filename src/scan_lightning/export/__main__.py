"""``python -m scan_lightning.export``: the export command (:func:`scan_lightning.cli.export.cli`)."""
from scan_lightning.cli.export import cli

if __name__ == "__main__":
    cli()
