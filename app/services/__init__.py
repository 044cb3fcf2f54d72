"""Business logic: plain functions that take a Session; the caller commits."""
