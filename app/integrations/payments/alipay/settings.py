"""Alipay settings from the environment: ``ALIPAY_*`` values and the keys they hold."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from Cryptodome.PublicKey import RSA

from app.integrations.payments.base import ProviderNotConfiguredError

ENV_APP_ID: Final = "ALIPAY_APP_ID"
ENV_PRIVATE_KEY: Final = "ALIPAY_PRIVATE_KEY"
ENV_PUBLIC_KEY: Final = "ALIPAY_PUBLIC_KEY"
ENV_SELLER_ID: Final = "ALIPAY_SELLER_ID"
ENV_GATEWAY: Final = "ALIPAY_GATEWAY"
ENV_MODE: Final = "ALIPAY_MODE"
DEFAULT_GATEWAY: Final = "https://openapi.alipay.com/gateway.do"
MODES: Final = ("precreate", "page")


def _setting_or_file(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip()
    if value:
        return value
    path = (env.get(f"{name}_FILE") or "").strip()
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProviderNotConfiguredError(
            f"{name}_FILE cannot be read ({type(exc).__name__})"
        ) from None


def _load_key(text: str, name: str, *, private: bool) -> RSA.RsaKey:
    """An RSA key given as PEM, PEM with literal ``\\n``, or bare base64 DER (as the Alipay
    console shows keys)."""
    text = text.strip().replace("\\n", "\n")
    what = "an RSA private key" if private else "an RSA public key"
    try:
        if "-----BEGIN" in text:
            key = RSA.import_key(text)
        else:
            key = RSA.import_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, IndexError, TypeError, binascii.Error):
        raise ProviderNotConfiguredError(f"{name} is not {what}") from None
    if key.has_private() != private:
        raise ProviderNotConfiguredError(f"{name} is not {what}")
    if key.size_in_bits() < 2048:
        raise ProviderNotConfiguredError(f"{name} is shorter than 2048 bits (RSA2 needs 2048)")
    return key


def _pem(key: RSA.RsaKey) -> str:
    exported = key.export_key(format="PEM", pkcs=8) if key.has_private() else key.export_key()
    return exported.decode("ascii") if isinstance(exported, bytes) else str(exported)


def provider_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``AlipayProvider`` arguments from ``ALIPAY_*`` settings;
    ``ProviderNotConfiguredError`` names what is missing or invalid (never a key's content)."""
    app_id = (env.get(ENV_APP_ID) or "").strip()
    private_key = _setting_or_file(env, ENV_PRIVATE_KEY)
    public_key = _setting_or_file(env, ENV_PUBLIC_KEY)
    missing = [ENV_APP_ID] if not app_id else []
    if not private_key:
        missing.append(f"{ENV_PRIVATE_KEY} (or {ENV_PRIVATE_KEY}_FILE)")
    if not public_key:
        missing.append(f"{ENV_PUBLIC_KEY} (or {ENV_PUBLIC_KEY}_FILE)")
    if missing or private_key is None or public_key is None:
        raise ProviderNotConfiguredError(f"Alipay needs {', '.join(missing)}")
    return dict(
        app_id=app_id,
        app_private_key=private_key,
        alipay_public_key=public_key,
        seller_id=(env.get(ENV_SELLER_ID) or "").strip() or None,
        gateway=(env.get(ENV_GATEWAY) or "").strip() or DEFAULT_GATEWAY,
        mode=(env.get(ENV_MODE) or "").strip().lower() or "precreate",
    )
