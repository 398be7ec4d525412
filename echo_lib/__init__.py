"""Echo: learn from the refinements users make to an AI coding agent's proposals."""

__version__ = "0.1.0"
