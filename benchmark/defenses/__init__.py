"""Defenses against membership inference. `output` holds the output-side ones (applied to released posteriors)."""
