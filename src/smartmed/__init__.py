"""smartmed: a smart medical cloud platform for a county medical community."""

__version__ = "0.1.0"
