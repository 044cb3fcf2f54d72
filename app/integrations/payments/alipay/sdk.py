"""The ``python-alipay-sdk`` import (``alipay``), without its logging side effect."""

import logging
import sys
import types

# ``alipay.loggers`` runs ``logging.config.dictConfig()`` at import time: that closes every
# logging handler the process has already installed and adds an unfiltered DEBUG console
# handler. Hand the SDK a plain logger instead when we are the first to import it.
if "alipay" not in sys.modules:
    _sdk_loggers = types.ModuleType("alipay.loggers")
    _sdk_loggers.logger = logging.getLogger("python-alipay-sdk")  # type: ignore[attr-defined]
    sys.modules.setdefault("alipay.loggers", _sdk_loggers)

from alipay import AliPay
from alipay.exceptions import AliPayException, AliPayValidationError

__all__ = ["AliPay", "AliPayException", "AliPayValidationError"]
