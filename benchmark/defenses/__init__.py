"""Defenses against membership inference; `output` holds those applied to the released posteriors."""
