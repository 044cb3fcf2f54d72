"""Plans, orders, payment events and subscriptions: money and provisioning agree.

Each public name lives in the module named by its concern and is re-exported here:

- ``checkout``: checkout creates a pending order whose amount and currency come from the
  plan, in a region the plan is offered in (``app.services.pool.regions``), after the user's
  box quota is checked (``quotas``), before any provider call. ``plans``: the catalogue.
- ``intake``: a verified provider event is recorded once (``payment_events`` is unique on
  provider + event id; a duplicate is a no-op); the task ``billing.apply_payment_event``
  (``workers/billing.py``), published after the caller commits, applies it.
- ``apply``: applying a recorded event: mark the order paid, create or extend the
  subscription, create the box (``record_event`` records and applies in one go);
  refunds. ``subscriptions``: renewal, failed payment and cancellation events.
- Events can arrive out of order: a renewal or cancellation for a provider subscription we
  do not know yet is kept unprocessed (``processed_at`` NULL, ``subject`` = the provider
  subscription id) and applied when its checkout is fulfilled.
- ``orders``: reads; ``reconcile``: pending orders checked with the provider.
"""

from app.services.billing.apply import apply_recorded_event, record_event, unapplied_events
from app.services.billing.checkout import PROVIDER_CURRENCY, start_checkout
from app.services.billing.event_records import EventOutcome
from app.services.billing.intake import intake_event
from app.services.billing.orders import get_order
from app.services.billing.plans import configure_plan, describe_plans, list_active_plans
from app.services.billing.quotas import (
    LIVE_BOX_STATUSES,
    LIVE_SUBSCRIPTION_STATUSES,
    QUOTA_BOX_STATUSES,
    CheckoutPolicy,
    check_quota,
    lock_user_quota,
    quota_limit,
    quota_usage,
    renewal_box,
)
from app.services.billing.reconcile import (
    expire_order,
    mark_order_failed,
    order_ref,
    reconcile_order,
    stale_pending_orders,
)
from app.services.billing.subscriptions import (
    cancel_subscription,
    cycle_delta,
    get_subscription,
    list_subscriptions,
)

__all__ = [
    "LIVE_BOX_STATUSES",
    "LIVE_SUBSCRIPTION_STATUSES",
    "PROVIDER_CURRENCY",
    "QUOTA_BOX_STATUSES",
    "CheckoutPolicy",
    "EventOutcome",
    "apply_recorded_event",
    "cancel_subscription",
    "check_quota",
    "configure_plan",
    "cycle_delta",
    "describe_plans",
    "expire_order",
    "get_order",
    "get_subscription",
    "intake_event",
    "list_active_plans",
    "list_subscriptions",
    "lock_user_quota",
    "mark_order_failed",
    "order_ref",
    "quota_limit",
    "quota_usage",
    "reconcile_order",
    "record_event",
    "renewal_box",
    "stale_pending_orders",
    "start_checkout",
    "unapplied_events",
]
