"""Stripe settings from the environment: ``STRIPE_*`` names and the price table."""

from __future__ import annotations

import json
from typing import Final

from app.integrations.payments.base import ProviderNotConfiguredError

ENV_SECRET_KEY: Final = "STRIPE_SECRET_KEY"  # noqa: S105 (a variable name)
ENV_WEBHOOK_SECRET: Final = "STRIPE_WEBHOOK_SECRET"  # noqa: S105
ENV_PRICE_IDS: Final = "STRIPE_PRICE_IDS"
ENV_API_BASE: Final = "STRIPE_API_BASE"


def _parse_price_ids(raw: str) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise ProviderNotConfiguredError(
            f"Stripe is disabled: {ENV_PRICE_IDS} is not valid JSON"
        ) from None
    if (
        not isinstance(value, dict)
        or not value
        or not all(
            isinstance(k, str) and ":" in k and isinstance(v, str) and v for k, v in value.items()
        )
    ):
        raise ProviderNotConfiguredError(
            f"Stripe is disabled: {ENV_PRICE_IDS} must be a JSON object like "
            f'{{"basic:monthly": "price_..."}}'
        )
    return {k.strip(): v.strip() for k, v in value.items()}
