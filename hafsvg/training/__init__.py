"""ELBO training with checkpoints, resume, metrics log and sample grids (:mod:`.train`)."""
