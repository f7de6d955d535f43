"""whispr: the real-time gateway of the Whispr messaging app (Phoenix Channels protocol on Trio)."""

__version__ = "0.1.0"
