"""segleak's science: data, models, defenses, attacks and metrics (importable without Ray or MLflow)."""

__version__ = "0.1.0"
