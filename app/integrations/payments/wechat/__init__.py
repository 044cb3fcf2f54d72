"""WeChat Pay (``WeChatPayProvider``); each part lives in the module named by its concern:
``client`` (API calls), ``events`` (callback verification and mapping), ``settings`` (env)."""

from app.integrations.payments.wechat.client import WeChatPayProvider

__all__ = ["WeChatPayProvider"]
