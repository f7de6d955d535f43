"""Load scenarios for whispr (python -m loadtest)."""
