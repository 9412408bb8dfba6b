"""Training: optimizer, sharded train state, the pure step functions and the one loop."""
