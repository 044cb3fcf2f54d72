"""Admin API: cloud providers."""
