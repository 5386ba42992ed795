"""stockkeeper: the system of record for sellable stock."""

__version__ = "0.1.0"
