"""One module per outside system: its wire format in, domain records out, and back."""
