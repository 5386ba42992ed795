"""The rules of stock, pure and synchronous: no I/O, no SQL, no await."""
