"""The shared HTTP double lifecycle lives in the product's development tools; the test
doubles import it from here."""

from app.devtools.http_double import DoubleRequestHandler, InjectedFaults, ThreadedHTTPDouble

__all__ = ["DoubleRequestHandler", "InjectedFaults", "ThreadedHTTPDouble"]
