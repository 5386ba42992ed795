"""Long-running loops: expiry now; dispatcher, consumers and pollers later."""
