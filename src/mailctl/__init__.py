"""mailctl: command-line administration for outgoing mail."""

__version__ = "0.1.0"
