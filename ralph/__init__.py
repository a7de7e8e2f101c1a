"""ralph: run an AI coding agent in a loop, one titled session per iteration."""

__version__ = "0.1.0"
