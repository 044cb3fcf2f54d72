"""Build the enabled providers from configuration, once per process.

A provider listed in PAYMENT_PROVIDERS but missing its settings is disabled with a clear
log line at start-up; checkout then answers 409 ``payment_provider_unavailable`` for it
instead of crashing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.config import Settings
from app.integrations.payments.base import PaymentProvider, ProviderNotConfiguredError

log = logging.getLogger(__name__)


@dataclass
class ProviderRegistry:
    enabled: dict[str, PaymentProvider] = field(default_factory=dict)
    disabled: dict[str, str] = field(default_factory=dict)  # name -> reason

    def get(self, name: str) -> PaymentProvider | None:
        return self.enabled.get(name)


def _build(name: str, env: Mapping[str, str], settings: Settings) -> PaymentProvider:
    # Imported on demand: a provider that is not enabled costs nothing at start-up.
    if name == "stripe":
        from app.integrations.payments.stripe import StripeProvider

        return StripeProvider.from_env(env)
    if name == "wechat":
        from app.integrations.payments.wechat import WeChatPayProvider

        return WeChatPayProvider.from_env(env)
    if name == "alipay":
        from app.integrations.payments.alipay import AlipayProvider

        return AlipayProvider.from_env(env)
    if name == "dev":
        from app.integrations.payments.dev_provider import DevProvider

        return DevProvider(settings.secret_key, settings.public_base_url)
    raise ProviderNotConfiguredError(f"unknown provider {name!r}")


def build_registry(settings: Settings, env: Mapping[str, str] | None = None) -> ProviderRegistry:
    """The providers of ``settings.payment_providers``, each built from its own variables
    (``settings.payment_variables``, or ``env`` when given)."""
    env = settings.payment_env if env is None else env
    registry = ProviderRegistry()
    for name in settings.payment_providers:
        try:
            registry.enabled[name] = _build(name, env, settings)
        except ProviderNotConfiguredError as exc:
            registry.disabled[name] = str(exc)
            log.warning("payment provider %s disabled: %s", name, exc)
    if registry.enabled:
        log.info("payment providers enabled: %s", ", ".join(sorted(registry.enabled)))
    return registry
