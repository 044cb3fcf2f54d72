"""Alipay (``AlipayProvider``); each part lives in the module named by its concern:
``client`` (API calls), ``events`` (notify verification and mapping), ``settings`` (env),
``sdk`` (the SDK import without its logging side effect)."""

from app.integrations.payments.alipay.client import AlipayProvider

__all__ = ["AlipayProvider"]
