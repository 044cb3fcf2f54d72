"""Test support: real service doubles (Happy server, OpenSSH boxes)."""
