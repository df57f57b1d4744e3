"""Nudge: a real-time behavior engine on Faust."""

__version__ = "0.1.0"
