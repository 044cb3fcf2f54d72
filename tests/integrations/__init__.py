"""Integration tests: app.integrations against the Happy double and real sshd boxes."""
