"""What a person reads: console tables, figures, the W&B dashboard, the config tree."""
