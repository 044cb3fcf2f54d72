"""The tests' Happy double is the product's development Happy server
(``app/devtools/happy_server.py``); one implementation, imported from here."""

from app.devtools.happy_server import HappyDouble, make_secret, seal

__all__ = ["HappyDouble", "make_secret", "seal"]
