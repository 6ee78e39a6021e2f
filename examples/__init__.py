"""Runnable examples (importable so that reward functions here load by dotted path, e.g. `examples.my_reward:...`)."""
