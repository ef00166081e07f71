"""Independent references shared by several test modules (no test file imports another test file)."""
