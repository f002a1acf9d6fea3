"""One config, one run: entry, setup, pruning, the training loop and steps, validation, reports, cost."""
