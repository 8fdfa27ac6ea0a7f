"""Training: the LightningModule, building from config, run directories, phases, callbacks, checkpoints."""
