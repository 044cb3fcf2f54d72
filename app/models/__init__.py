"""All models, imported here so ``Base.metadata`` is complete for Alembic."""

from app.models.base import Base
from app.models.billing import Order, PaymentEvent, Subscription
from app.models.cloud import CloudProvider
from app.models.happy import HappyAccount, HappyServerToken
from app.models.plan import Plan
from app.models.server import Server
from app.models.user import User
from app.models.vibebox import BoxEvent, ProvisioningStep, VibeBox

__all__ = [
    "Base",
    "BoxEvent",
    "CloudProvider",
    "HappyAccount",
    "HappyServerToken",
    "Order",
    "PaymentEvent",
    "Plan",
    "ProvisioningStep",
    "Server",
    "Subscription",
    "User",
    "VibeBox",
]
