"""Admin API for the server pool: ``/api/admin/servers``."""
