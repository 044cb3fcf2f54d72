"""WeChat Pay settings from the environment: ``WECHAT_PAY_*`` values and their keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from wechatpayv3.utils import load_private_key, load_public_key

from app.integrations.payments.base import ProviderNotConfiguredError

DEFAULT_API_BASE = "https://api.mch.weixin.qq.com"
API_V3_KEY_LENGTH = 32  # AES-256: the APIv3 key is 32 ASCII characters

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


def _pem_setting(env: Mapping[str, str], name: str, missing: list[str]) -> str:
    """PEM text from ``name`` (``\\n`` escapes allowed) or from the file ``name_FILE``."""
    value = (env.get(name) or "").strip()
    if value:
        return value.replace("\\n", "\n") if "\n" not in value else value
    path = (env.get(f"{name}_FILE") or "").strip()
    if not path:
        missing.append(f"{name} (or {name}_FILE)")
        return ""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProviderNotConfiguredError(
            f"{name}_FILE: cannot read {path} ({type(exc).__name__})"
        ) from None
    if not text:
        raise ProviderNotConfiguredError(f"{name}_FILE: {path} is empty")
    return text


def _load_private_key(pem: str) -> RSAPrivateKey:
    try:
        key = load_private_key(pem)  # PKCS#8 PEM, or its bare base64 body
    except Exception:  # the SDK raises a bare Exception
        try:
            key = load_pem_private_key(pem.encode("utf-8"), password=None)  # e.g. PKCS#1
        except (ValueError, TypeError):
            key = None
    if not isinstance(key, RSAPrivateKey):
        raise ProviderNotConfiguredError(
            "WECHAT_PAY_MCH_PRIVATE_KEY is not an unencrypted PEM RSA private key"
        )
    return key


def _load_platform_key(pem: str, key_id: str) -> RSAPublicKey:
    key: Any
    try:
        if "BEGIN CERTIFICATE" in pem:  # a pre-placed platform certificate
            key = x509.load_pem_x509_certificate(pem.encode("utf-8")).public_key()
        else:
            key = load_public_key(pem)
    except Exception:  # the SDK raises a bare Exception
        key = None
    if not isinstance(key, RSAPublicKey):
        raise ProviderNotConfiguredError(
            f"WECHAT_PAY_PUBLIC_KEY for id {key_id!r} is not a PEM RSA public key or certificate"
        )
    return key


def provider_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``WeChatPayProvider`` arguments from ``WECHAT_PAY_*`` settings (no network).

    Keys: ``WECHAT_PAY_MCH_PRIVATE_KEY`` / ``WECHAT_PAY_PUBLIC_KEY`` hold PEM text (``\\n``
    escapes allowed), or name a file through the ``_FILE`` variant.
    ``WECHAT_PAY_PUBLIC_KEY_ID`` may be a comma list: with one key, every listed id verifies
    with it; with as many PEM blocks as ids, they pair up in order (key rotation).
    """
    missing: list[str] = []

    def required(name: str) -> str:
        value = (env.get(name) or "").strip()
        if not value:
            missing.append(name)
        return value

    mchid = required("WECHAT_PAY_MCHID")
    appid = required("WECHAT_PAY_APPID")
    api_v3_key = required("WECHAT_PAY_API_KEY")
    serial = required("WECHAT_PAY_MCH_CERT_SERIAL")
    private_key = _pem_setting(env, "WECHAT_PAY_MCH_PRIVATE_KEY", missing)
    public_keys = _pem_setting(env, "WECHAT_PAY_PUBLIC_KEY", missing)
    key_ids = [k.strip() for k in (env.get("WECHAT_PAY_PUBLIC_KEY_ID") or "").split(",")]
    key_ids = [k for k in key_ids if k]
    if not key_ids:
        missing.append("WECHAT_PAY_PUBLIC_KEY_ID")
    if missing:
        raise ProviderNotConfiguredError(
            "WeChat Pay is not configured: missing " + ", ".join(missing)
        )

    # One PEM block per key; a bare base64 key body counts as one key.
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(public_keys)] or [public_keys]
    if len(blocks) == 1:
        platform = dict.fromkeys(key_ids, blocks[0])
    elif len(blocks) == len(key_ids):
        platform = dict(zip(key_ids, blocks, strict=True))
    else:
        raise ProviderNotConfiguredError(
            f"WECHAT_PAY_PUBLIC_KEY holds {len(blocks)} keys but WECHAT_PAY_PUBLIC_KEY_ID "
            f"lists {len(key_ids)} ids (give one key, or one key per id)"
        )
    api_base = (env.get("WECHAT_PAY_API_BASE") or "").strip() or DEFAULT_API_BASE
    return dict(
        mchid=mchid,
        appid=appid,
        api_v3_key=api_v3_key,
        merchant_private_key=private_key,
        merchant_cert_serial=serial,
        platform_public_keys=platform,
        api_base=api_base,
    )
