"""Shared test helpers: a real fake upstream on loopback, and ways to run the proxy."""
