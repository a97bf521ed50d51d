"""The sandbox: runs untrusted metric code in isolated worker processes and returns results as data."""
