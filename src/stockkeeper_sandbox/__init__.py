"""Working stand-ins for the systems around stockkeeper, for the tests and the demo."""
