"""Stripe (``StripeProvider``); each part lives in the module named by its concern:
``client`` (API calls), ``events`` (webhook verification and mapping), ``settings`` (env)."""

from app.integrations.payments.stripe.client import StripeProvider

__all__ = ["StripeProvider"]
