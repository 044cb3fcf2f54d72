"""Adapters to remote systems (Happy server, SSH hosts, payment providers, clouds)."""
