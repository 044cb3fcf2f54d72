"""Plans, orders, payment events and subscriptions: money and provisioning agree.

- Checkout creates a pending order whose amount and currency come from the plan, in a
  region the plan is offered in (``app.services.pool.regions``), after the user's box quota
  is checked (below), before any provider call.
- A verified provider event is recorded once (``payment_events`` is unique on provider +
  event id; a duplicate is a no-op) and applied in the same transaction: mark the order
  paid, create or extend the subscription, create the box. The caller commits, then
  enqueues the returned boxes.
- Events can arrive out of order: a renewal or cancellation for a provider subscription we
  do not know yet is kept unprocessed (``processed_at`` NULL, ``subject`` = the provider
  subscription id) and applied when its checkout is fulfilled.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dateutil.relativedelta import relativedelta
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.config import RegionSettings
from app.errors import (
    AmountMismatchError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    PaymentProviderError,
    PermanentError,
    TransientError,
    UnknownOrderError,
    ValidationError,
)
from app.integrations.payments.base import (
    CheckoutRequest,
    CheckoutSession,
    EventKind,
    OrderRef,
    OrderState,
    PaymentProvider,
    ProviderEvent,
)
from app.models import Order, PaymentEvent, Plan, Subscription, User, VibeBox
from app.models.vibebox import VIBEBOX_STATUSES
from app.services import engine, jobs, provisioning
from app.services.pool import regions

log = logging.getLogger(__name__)

# WeChat Pay and Alipay charge CNY; Stripe and dev charge in the plan's own currency.
PROVIDER_CURRENCY = {"wechat": "CNY", "alipay": "CNY"}
LIVE_SUBSCRIPTION_STATUSES = ("active", "past_due")
LIVE_BOX_STATUSES = tuple(s for s in VIBEBOX_STATUSES if s not in ("terminated", "error"))
# What the per-user quota counts: every box not (being) torn down, failed ones included.
QUOTA_BOX_STATUSES = tuple(s for s in VIBEBOX_STATUSES if s not in ("terminating", "terminated"))


@dataclass(frozen=True)
class CheckoutPolicy:
    """What checkout needs from the settings (regions, the quota); the defaults are the
    settings' defaults."""

    regions: RegionSettings = field(default_factory=RegionSettings)
    max_live_boxes_per_user: int = 3  # 0: no limit
    pending_order_seconds: float = 3600.0  # unpaid checkouts count this long

    @classmethod
    def from_settings(cls, settings: Any) -> CheckoutPolicy:
        return cls(
            regions=settings.regions,
            max_live_boxes_per_user=settings.max_live_boxes_per_user,
            pending_order_seconds=settings.quota_pending_order_seconds,
        )


def utcnow() -> datetime:
    return datetime.now(UTC)


def cycle_delta(billing_cycle: str) -> relativedelta:
    return relativedelta(years=1) if billing_cycle == "yearly" else relativedelta(months=1)


# --- catalogue and orders -----------------------------------------------------------------


def list_active_plans(session: Session) -> list[Plan]:
    return list(session.scalars(select(Plan).where(Plan.active).order_by(Plan.price_monthly)))


def describe_plans(session: Session, settings: Any) -> list[dict[str, Any]]:
    """The active plans as the catalogue shows them: the columns, plus the regions each is
    offered in, its default region and the box limit that applies to it."""
    policy = CheckoutPolicy.from_settings(settings)
    return [
        {
            **{column.key: getattr(plan, column.key) for column in Plan.__table__.columns},
            "offered_regions": regions.offered_regions(policy.regions, plan),
            "default_region": regions.default_region(policy.regions, plan),
            "max_live_boxes": quota_limit(plan, policy),
        }
        for plan in list_active_plans(session)
    ]


def start_checkout(
    session: Session,
    *,
    user: User,
    plan_id: str,
    billing_cycle: str,
    provider: PaymentProvider,
    notify_url: str,
    return_url: str,
    region: str | None = None,
    policy: CheckoutPolicy | None = None,
) -> tuple[Order, CheckoutSession]:
    """Create a pending order (price from the plan) and the provider's payment for it.

    Before the provider hears of it: the region is resolved (422 ``region_unavailable``)
    and, unless the order extends a subscription that has its box, the user's box quota is
    checked (409 ``quota_exceeded``) under a per-user lock, so concurrent checkouts of one
    user are counted one after the other."""
    policy = policy or CheckoutPolicy()
    plan = session.get(Plan, plan_id)
    if plan is None or not plan.active:
        raise ValidationError(errors={"planId": ["Unknown plan."]})
    lock_user_quota(session, user.id)
    renewing = renewal_box(session, user.id, plan.id)
    if renewing is not None and region is None:
        order_region = renewing.region  # an extension: the box stays where it is
    else:
        order_region = regions.resolve_region(policy.regions, plan, region)
        if renewing is not None and order_region != renewing.region:
            raise ConflictError(
                f"Your {plan.name} subscription's box runs in region "
                f"{renewing.region or '(none)'}; a further order of that plan extends it "
                "there. Leave out region, or buy another plan.",
                code="region_mismatch",
                extra={"region": renewing.region},
            )
    if renewing is None:
        check_quota(session, user.id, plan, policy)
    currency = PROVIDER_CURRENCY.get(provider.name, plan.currency)
    amount = plan.price_for(billing_cycle, currency)
    if amount <= 0:
        raise ConflictError(
            f"The {plan.name} plan is not sold in {currency}", code="plan_not_available"
        )
    order = Order(
        id=uuid.uuid4(),
        user_id=user.id,
        plan_id=plan.id,
        billing_cycle=billing_cycle,
        provider=provider.name,
        amount=amount,
        currency=currency,
        status="pending",
        region=order_region,
    )
    session.add(order)
    session.flush()
    try:
        checkout = provider.create_order(
            CheckoutRequest(
                order_id=str(order.id),
                user_id=str(user.id),
                user_email=user.email,
                plan_id=plan.id,
                plan_name=plan.name,
                billing_cycle=billing_cycle,
                amount=amount,
                currency=currency,
                notify_url=notify_url,
                return_url=return_url,
            )
        )
    except TransientError as exc:
        log.warning("checkout at %s failed (transient): %s", provider.name, exc)
        raise PaymentProviderError(
            "The payment provider is not answering; try again shortly",
            code="payment_provider_unavailable",
        ) from None
    except PermanentError as exc:
        log.error("checkout at %s refused: %s", provider.name, exc)
        raise PaymentProviderError(
            "The payment provider refused the order", code="payment_provider_error"
        ) from None
    order.provider_order_id = checkout.provider_order_id
    log.info("order %s created at %s (%s %s)", order.id, provider.name, amount, currency)
    return order, checkout


_UNSET: Any = object()


def configure_plan(
    session: Session,
    plan_id: str,
    region_settings: RegionSettings,
    *,
    regions: list[str] | None = _UNSET,
    default_region: str | None = _UNSET,
    max_live_boxes_per_user: int | None = _UNSET,
) -> Plan:
    """Set where a plan is sold and its box limit (operators: ``vibebox plans update``).
    None clears a setting (every region / DEFAULT_REGION / MAX_LIVE_BOXES_PER_USER); an
    argument left out is not changed. Region names must be in REGIONS when it is set."""
    from app.config import REGION_RE

    plan = session.get(Plan, plan_id, with_for_update=True)
    if plan is None:
        raise NotFoundError("No such plan", code="plan_not_found")
    problems: dict[str, list[str]] = {}
    known = region_settings.regions

    def check(field_name: str, names: list[str]) -> None:
        bad = [n for n in names if not REGION_RE.fullmatch(n) or (known and n not in known)]
        if bad:
            problems[field_name] = [
                f"not a region of REGIONS ({', '.join(known) or 'none set'}): {', '.join(bad)}"
            ]

    if regions is not _UNSET:
        if regions is not None:
            regions = list(dict.fromkeys(r.strip().lower() for r in regions if r.strip()))
            check("regions", regions)
        plan.regions = regions
    if default_region is not _UNSET:
        if default_region is not None:
            default_region = default_region.strip().lower()
            check("defaultRegion", [default_region])
        plan.default_region = default_region
    if (
        plan.default_region is not None
        and plan.regions is not None
        and plan.default_region not in plan.regions
    ):
        problems.setdefault("defaultRegion", []).append("not one of the plan's regions")
    if max_live_boxes_per_user is not _UNSET:
        if max_live_boxes_per_user is not None and max_live_boxes_per_user < 0:
            problems["maxLiveBoxesPerUser"] = ["must be 0 (no limit) or more"]
        plan.max_live_boxes_per_user = max_live_boxes_per_user
    if problems:
        raise ValidationError("The plan settings are not valid", errors=problems)
    session.flush()
    return plan


# --- quotas ---------------------------------------------------------------------------------


def _quota_lock_key(user_id: uuid.UUID) -> int:
    digest = hashlib.blake2b(f"quota:{user_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def lock_user_quota(session: Session, user_id: uuid.UUID) -> None:
    """Serialize the quota checks of one user (until the transaction ends)."""
    session.execute(select(func.pg_advisory_xact_lock(_quota_lock_key(user_id))))


def renewal_box(session: Session, user_id: uuid.UUID, plan_id: str) -> VibeBox | None:
    """The working box of the user's live subscription of ``plan_id``, if any: a further
    order of that plan extends the subscription and adds no box (see ``_fulfil``)."""
    return session.scalar(
        select(VibeBox)
        .join(Subscription, VibeBox.subscription_id == Subscription.id)
        .where(
            Subscription.user_id == user_id,
            Subscription.plan_id == plan_id,
            Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
            VibeBox.status.in_(LIVE_BOX_STATUSES),
        )
        .order_by(VibeBox.created_at.desc())
        .limit(1)
    )


def quota_limit(plan: Plan, policy: CheckoutPolicy) -> int:
    """Live boxes a user may have when buying ``plan`` (0: no limit)."""
    if plan.max_live_boxes_per_user is not None:
        return plan.max_live_boxes_per_user
    return policy.max_live_boxes_per_user


def quota_usage(
    session: Session, user_id: uuid.UUID, *, plan_id: str, pending_order_seconds: float
) -> tuple[int, int]:
    """(live boxes, unpaid checkouts that would add a box) of the user, not counting a
    checkout of ``plan_id`` itself (a new one for that plan replaces it: paying both
    gives one box and a longer period). Unpaid checkouts count for
    ``pending_order_seconds`` after they were made."""
    live = session.scalar(
        select(func.count())
        .select_from(VibeBox)
        .where(VibeBox.user_id == user_id, VibeBox.status.in_(QUOTA_BOX_STATUSES))
    )
    since = utcnow() - relativedelta(seconds=int(pending_order_seconds))
    pending_plans = session.scalars(
        select(Order.plan_id)
        .where(
            Order.user_id == user_id,
            Order.status == "pending",
            Order.created_at >= since,
            Order.plan_id != plan_id,
        )
        .distinct()
    ).all()
    adding = [p for p in pending_plans if renewal_box(session, user_id, p) is None]
    return live or 0, len(adding)


def check_quota(session: Session, user_id: uuid.UUID, plan: Plan, policy: CheckoutPolicy) -> None:
    """409 ``quota_exceeded`` when one more box of ``plan`` would pass the user's limit."""
    limit = quota_limit(plan, policy)
    if limit == 0:
        return
    live, pending = quota_usage(
        session, user_id, plan_id=plan.id, pending_order_seconds=policy.pending_order_seconds
    )
    if live + pending + 1 <= limit:
        return
    have = f"{live} live box{'es' if live != 1 else ''}"
    if pending:
        have += f" and {pending} checkout{'s' if pending != 1 else ''} awaiting payment"
    raise ConflictError(
        f"You have {have}; the limit for the {plan.name} plan is {limit}. "
        "Terminate one (cancel its subscription) or contact support.",
        code="quota_exceeded",
        extra={"limit": limit, "liveBoxes": live, "pendingCheckouts": pending},
    )


def get_order(session: Session, order_id: uuid.UUID, *, owner_id: uuid.UUID | None = None) -> Order:
    order = session.get(Order, order_id)
    if order is None or (owner_id is not None and order.user_id != owner_id):
        raise NotFoundError("No such order", code="order_not_found")
    return order


def box_of_order(session: Session, order_id: uuid.UUID) -> uuid.UUID | None:
    return session.scalar(select(VibeBox.id).where(VibeBox.order_id == order_id))


def describe_order(session: Session, order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "status": order.status,
        "planId": order.plan_id,
        "billingCycle": order.billing_cycle,
        "provider": order.provider,
        "amount": order.amount,
        "currency": order.currency,
        "region": order.region,
        "createdAt": order.created_at,
        "paidAt": order.paid_at,
        "subscriptionId": order.subscription_id,
        "vibeBoxId": box_of_order(session, order.id),
    }


# --- provider events ----------------------------------------------------------------------


@dataclass
class EventOutcome:
    duplicate: bool = False
    boxes_to_provision: list[uuid.UUID] = field(default_factory=list)
    boxes_to_teardown: list[uuid.UUID] = field(default_factory=list)
    note: str | None = None


def _serialize(event: ProviderEvent) -> dict[str, Any]:
    """The normalized event, stored so a deferred event can be applied later as it was."""
    return {
        "kind": event.kind.value,
        "type": event.type,
        "order_id": event.order_id,
        "provider_order_id": event.provider_order_id,
        "provider_subscription_id": event.provider_subscription_id,
        "provider_customer_id": event.provider_customer_id,
        "amount": event.amount,
        "currency": event.currency,
        "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
        "period_end": event.period_end.isoformat() if event.period_end else None,
        "amount_required": event.amount_required,
        "data": event.payload,
    }


def _deserialize(provider: str, event_id: str, stored: dict[str, Any]) -> ProviderEvent:
    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return ProviderEvent(
        provider=provider,
        event_id=event_id,
        type=stored["type"],
        kind=EventKind(stored["kind"]),
        order_id=stored["order_id"],
        provider_order_id=stored["provider_order_id"],
        provider_subscription_id=stored["provider_subscription_id"],
        provider_customer_id=stored["provider_customer_id"],
        amount=stored["amount"],
        currency=stored["currency"],
        occurred_at=when(stored["occurred_at"]),
        period_end=when(stored["period_end"]),
        amount_required=stored.get("amount_required", True),
        payload=stored.get("data") or {},
    )


def record_event(session: Session, event: ProviderEvent) -> EventOutcome:
    """Record a verified event once and apply it. Raises ``UnknownOrderError`` (nothing is
    recorded) or ``AmountMismatchError`` (recorded and the order flagged, not paid)."""
    inserted = session.scalar(
        insert(PaymentEvent)
        .values(
            id=uuid.uuid4(),
            provider=event.provider,
            event_id=event.event_id,
            type=event.type[:128],
            payload=_serialize(event),
            subject=event.provider_subscription_id,
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(PaymentEvent.id)
    )
    if inserted is None:
        log.info("payment event %s/%s is a duplicate: no-op", event.provider, event.event_id)
        return EventOutcome(duplicate=True, note="duplicate")
    record = session.get(PaymentEvent, inserted)
    assert record is not None
    outcome = EventOutcome()
    _apply(session, record, event, outcome)
    return outcome


def intake_event(session: Session, event: ProviderEvent) -> EventOutcome:
    """The webhook's part: record a verified event once and leave its effect to the task
    ``billing.apply_payment_event``, enqueued for when the caller commits (see
    ``apply_recorded_event``). Two statements for a payment (the order it names, the INSERT).

    Refused as today, before anything is recorded: an event that names no known order
    (``UnknownOrderError``). A payment whose amount does not match its order is settled here,
    synchronously (``record_event``: recorded, the order flagged, ``AmountMismatchError``), so
    the provider still hears "no". A duplicate delivery is a no-op.
    """
    order_id: uuid.UUID | None = None
    if event.kind in (EventKind.PAID, EventKind.REFUNDED):
        order = _find_order(session, event)
        if order is None or order.provider != event.provider:
            raise UnknownOrderError(f"No order matches {event.provider} event {event.event_id}")
        if event.kind is EventKind.PAID and _amount_problem(order, event):
            return record_event(session, event)
        order_id = order.id
    inserted = session.scalar(
        insert(PaymentEvent)
        .values(
            id=uuid.uuid4(),
            order_id=order_id,
            provider=event.provider,
            event_id=event.event_id,
            type=event.type[:128],
            payload=_serialize(event),
            subject=event.provider_subscription_id,
        )
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(PaymentEvent.id)
    )
    if inserted is None:
        log.info("payment event %s/%s is a duplicate: no-op", event.provider, event.event_id)
        return EventOutcome(duplicate=True, note="duplicate")
    jobs.enqueue_payment_event(session, inserted)
    return EventOutcome(note="recorded")


def apply_recorded_event(session: Session, payment_event_id: uuid.UUID) -> str:
    """Apply a recorded event (the task's part; the caller commits). Idempotent: the event
    row is locked and an event already processed (``processed_at``) or deferred (waiting for
    its subscription, replayed by ``_replay_deferred``) is left alone, so a redelivered or
    re-enqueued task never applies a payment twice. Returns what happened."""
    record = session.get(
        PaymentEvent, payment_event_id, with_for_update=True, populate_existing=True
    )
    if record is None:
        return "unknown event"
    if record.processed_at is not None or record.note is not None:
        return "already done"
    event = _deserialize(record.provider, record.event_id, record.payload)
    outcome = EventOutcome()
    try:
        _apply(session, record, event, outcome)
    except UnknownOrderError:  # the order vanished since intake: keep the record, stop
        _processed(record, "unknown order")
    except AmountMismatchError:
        pass  # the order is flagged and the event processed (``_on_paid``)
    return record.note or "applied"


def unapplied_events(session: Session, *, older_than: float, limit: int = 500) -> list[uuid.UUID]:
    """Recorded events whose task never finished (a lost message, a crash, a broker outage
    at intake): neither processed nor deferred, received more than ``older_than`` s ago."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    return list(
        session.scalars(
            select(PaymentEvent.id)
            .where(
                PaymentEvent.processed_at.is_(None),
                PaymentEvent.note.is_(None),
                PaymentEvent.received_at < cutoff,
            )
            .order_by(PaymentEvent.received_at)
            .limit(limit)
        )
    )


def _find_order(session: Session, event: ProviderEvent) -> Order | None:
    """The order an event names (no lock: intake only checks that it exists)."""
    if event.order_id:
        try:
            order = session.get(Order, uuid.UUID(event.order_id))
        except ValueError:
            order = None
        if order is not None:
            return order
    if event.provider_order_id:
        return session.scalar(
            select(Order).where(
                Order.provider == event.provider, Order.provider_order_id == event.provider_order_id
            )
        )
    return None


def _amount_problem(order: Order, event: ProviderEvent) -> bool:
    """The check ``_on_paid`` makes, for an order not paid yet."""
    if order.status in ("paid", "refunded"):
        return False
    missing = event.amount is None or not event.currency
    return (missing and event.amount_required) or (
        not missing
        and (event.amount != order.amount or (event.currency or "").upper() != order.currency)
    )


def _apply(session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome) -> None:
    handler = {
        EventKind.PAID: _on_paid,
        EventKind.RENEWED: _on_renewed,
        EventKind.PAYMENT_FAILED: _on_payment_failed,
        EventKind.CANCEL_AT_PERIOD_END: _on_cancel_at_period_end,
        EventKind.CANCELED: _on_canceled,
        EventKind.REFUNDED: _on_refunded,
    }.get(event.kind)
    if handler is None:
        _processed(record, "ignored")
        return
    handler(session, record, event, out)


def _processed(record: PaymentEvent, note: str | None = None) -> None:
    record.processed_at = utcnow()
    record.note = note


def _defer(record: PaymentEvent, out: EventOutcome) -> None:
    """Keep the event for when its subscription becomes known (out-of-order delivery)."""
    record.processed_at = None
    record.note = "deferred: subscription not known yet"
    out.note = record.note
    log.info("payment event %s deferred until %s is known", record.event_id, record.subject)


def _locked_order(session: Session, event: ProviderEvent) -> Order | None:
    order_id: uuid.UUID | None = None
    if event.order_id:
        try:
            order_id = uuid.UUID(event.order_id)
        except ValueError:
            order_id = None
    if order_id is not None:
        order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
        if order is not None:
            return order
    if event.provider_order_id:
        return session.scalar(
            select(Order)
            .where(
                Order.provider == event.provider, Order.provider_order_id == event.provider_order_id
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    return None


def _on_paid(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    order = _locked_order(session, event)
    if order is None or order.provider != event.provider:
        raise UnknownOrderError(f"No order matches {event.provider} event {event.event_id}")
    record.order_id = order.id
    if order.status in ("paid", "refunded"):
        _processed(record, f"order already {order.status}")
        out.note = record.note
        return
    missing = event.amount is None or not event.currency
    if _amount_problem(order, event):
        order.flag = (
            f"amount missing: the {event.provider} event does not say what was paid, "
            f"expected {order.amount} {order.currency}"
            if missing
            else f"amount mismatch: paid {event.amount} {event.currency}, "
            f"expected {order.amount} {order.currency}"
        )
        _processed(record, "flagged: amount missing" if missing else "flagged: amount mismatch")
        log.error("order %s: %s (event %s)", order.id, order.flag, event.event_id)
        raise AmountMismatchError("The paid amount does not match the order")
    # A payment for an order we had given up on is still money taken: fulfil it.
    order.status = "paid"
    order.paid_at = event.occurred_at or utcnow()
    order.flag = None
    if event.provider_order_id and not order.provider_order_id:
        order.provider_order_id = event.provider_order_id
    subscription, box = _fulfil(session, order, event)
    _processed(record)
    if box is not None:
        out.boxes_to_provision.append(box.id)
    log.info("order %s paid (%s); subscription %s", order.id, event.provider, subscription.id)
    if subscription.payment_subscription_id:
        _replay_deferred(session, event.provider, subscription.payment_subscription_id, out)


def _subscription_lock_key(user_id: uuid.UUID, plan_id: str) -> int:
    """A signed 64-bit advisory-lock key for (user, plan)."""
    digest = hashlib.blake2b(f"subscription:{user_id}:{plan_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _fulfil(
    session: Session, order: Order, event: ProviderEvent
) -> tuple[Subscription, VibeBox | None]:
    """Create the subscription and its box, or extend the user's active one for this plan."""
    now = utcnow()
    delta = cycle_delta(order.billing_cycle)
    # One live subscription per (user, plan), extended by every further order: two orders
    # paid at the same moment must not both see "none yet" and create two: a
    # transaction-scoped advisory lock per (user, plan) serializes them (a row lock cannot:
    # the row to lock may not exist yet).
    session.execute(
        select(func.pg_advisory_xact_lock(_subscription_lock_key(order.user_id, order.plan_id)))
    )
    current = session.scalar(
        select(Subscription)
        .where(
            Subscription.user_id == order.user_id,
            Subscription.plan_id == order.plan_id,
            Subscription.status.in_(LIVE_SUBSCRIPTION_STATUSES),
        )
        .order_by(Subscription.current_period_end.desc())
        .with_for_update()
    )
    if current is not None:
        current.current_period_end = max(current.current_period_end, now) + delta
        current.status = "active"
        if event.provider_subscription_id:
            current.payment_subscription_id = event.provider_subscription_id
            current.payment_provider = order.provider
        order.subscription_id = current.id
        live = session.scalar(
            select(VibeBox.id).where(
                VibeBox.subscription_id == current.id, VibeBox.status.in_(LIVE_BOX_STATUSES)
            )
        )
        box = None
        if live is None:  # the paid subscription has no working box: give it one
            box = provisioning.create_vibebox(
                session,
                user_id=order.user_id,
                plan_id=order.plan_id,
                subscription_id=current.id,
                order_id=order.id,
                region=order.region,
            )
        return current, box
    subscription = Subscription(
        id=uuid.uuid4(),
        user_id=order.user_id,
        plan_id=order.plan_id,
        status="active",
        billing_cycle=order.billing_cycle,
        payment_provider=order.provider,
        payment_customer_id=event.provider_customer_id,
        payment_subscription_id=event.provider_subscription_id,
        current_period_start=now,
        current_period_end=now + delta,
    )
    session.add(subscription)
    session.flush()
    order.subscription_id = subscription.id
    box = provisioning.create_vibebox(
        session,
        user_id=order.user_id,
        plan_id=order.plan_id,
        subscription_id=subscription.id,
        order_id=order.id,
        region=order.region,
    )
    return subscription, box


def _subscription_for(session: Session, event: ProviderEvent) -> Subscription | None:
    if not event.provider_subscription_id:
        return None
    return session.scalar(
        select(Subscription)
        .where(
            Subscription.payment_provider == event.provider,
            Subscription.payment_subscription_id == event.provider_subscription_id,
        )
        .with_for_update()
    )


def _on_renewed(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    sub = _subscription_for(session, event)
    if sub is None:
        _defer(record, out)
        return
    new_end = event.period_end or max(sub.current_period_end, utcnow()) + cycle_delta(
        sub.billing_cycle
    )
    if new_end > sub.current_period_end:
        sub.current_period_end = new_end
    if sub.status in ("past_due", "expired"):
        sub.status = "active"
    _processed(record)
    log.info("subscription %s renewed until %s", sub.id, sub.current_period_end)


def _on_payment_failed(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    if event.order_id or (event.provider_order_id and not event.provider_subscription_id):
        order = _locked_order(session, event)
        if order is not None and order.status == "pending":
            order.status = "failed"
            record.order_id = order.id
            _processed(record)
            return
    sub = _subscription_for(session, event)
    if sub is None:
        if event.provider_subscription_id:
            _defer(record, out)
        else:
            _processed(record, "no matching order or subscription")
        return
    if sub.status == "active":
        sub.status = "past_due"
    _processed(record)


def _on_cancel_at_period_end(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    sub = _subscription_for(session, event)
    if sub is None:
        _defer(record, out)
        return
    sub.cancel_at_period_end = True
    _processed(record)


def _on_canceled(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    sub = _subscription_for(session, event)
    if sub is None:
        _defer(record, out)
        return
    _cancel_now(sub)
    _processed(record)


def _on_refunded(
    session: Session, record: PaymentEvent, event: ProviderEvent, out: EventOutcome
) -> None:
    """A full refund takes back what the order bought: the period it paid for, and the box
    with it when nothing paid is left."""
    order = _locked_order(session, event)
    if order is None or order.provider != event.provider:
        raise UnknownOrderError(f"No order matches {event.provider} refund {event.event_id}")
    record.order_id = order.id
    if order.status == "refunded":
        _processed(record, "order already refunded")
        return
    if event.amount is not None and event.amount != order.amount:
        _processed(record, "partial refund: not applied")
        log.warning(
            "order %s: refund of %s of %s not applied", order.id, event.amount, order.amount
        )
        return
    was_paid = order.status == "paid"
    order.status = "refunded"
    _processed(record)
    log.warning("order %s refunded at %s", order.id, event.provider)
    if not was_paid or order.subscription_id is None:
        return  # never fulfilled: nothing to take back (and a late PAID will not fulfil it)
    sub = session.get(Subscription, order.subscription_id, with_for_update=True)
    if sub is None:
        return
    created_it = session.scalar(select(VibeBox.id).where(VibeBox.order_id == order.id)) is not None
    shortened = sub.current_period_end - cycle_delta(order.billing_cycle)
    if created_it or shortened <= utcnow():
        _cancel_now(sub)
        live = session.scalars(
            select(VibeBox.id).where(
                VibeBox.subscription_id == sub.id,
                VibeBox.status.not_in(("terminating", "terminated")),
            )
        ).all()
        out.boxes_to_teardown.extend(
            box_id
            for box_id in live
            if engine.start_teardown(session, box_id, reason="payment refunded", cancellable=False)
        )
    else:
        sub.current_period_end = shortened  # an extension refunded: back to the old end


def _replay_deferred(session: Session, provider: str, subject: str, out: EventOutcome) -> None:
    deferred = session.scalars(
        select(PaymentEvent)
        .where(
            PaymentEvent.provider == provider,
            PaymentEvent.subject == subject,
            PaymentEvent.processed_at.is_(None),
        )
        .order_by(PaymentEvent.received_at)
        .with_for_update()
    ).all()
    for record in deferred:
        event = _deserialize(provider, record.event_id, record.payload)
        log.info("applying deferred payment event %s", record.event_id)
        _apply(session, record, event, out)


# --- subscriptions --------------------------------------------------------------------------


def _cancel_now(sub: Subscription) -> None:
    now = utcnow()
    sub.status = "canceled"
    sub.canceled_at = now
    if sub.current_period_end > now:
        sub.current_period_end = now
        # The period must stay non-empty (a CHECK constraint) even for a same-second cancel.
        sub.current_period_start = min(sub.current_period_start, now - relativedelta(seconds=1))


def cancel_subscription(
    session: Session,
    subscription_id: uuid.UUID,
    *,
    at_period_end: bool,
    provider: PaymentProvider | None,
) -> Subscription:
    """Support cancellation (operators cancel on a customer's request, e.g. by email); also at
    the provider when it bills repeatedly (Stripe)."""
    sub = session.get(Subscription, subscription_id, with_for_update=True)
    if sub is None:
        raise NotFoundError("No such subscription", code="subscription_not_found")
    if sub.status in ("canceled", "expired"):
        raise InvalidStateError(
            f"The subscription is already {sub.status}",
            code="subscription_not_active",
            extra={"status": sub.status},
        )
    if provider is not None and sub.payment_subscription_id:
        try:
            provider.cancel_subscription(sub.payment_subscription_id, at_period_end=at_period_end)
        except (TransientError, PermanentError) as exc:
            log.error("cancel of %s at %s failed: %s", sub.id, sub.payment_provider, exc)
            raise PaymentProviderError(
                "The payment provider could not cancel the subscription"
            ) from None
    if at_period_end:
        sub.cancel_at_period_end = True
    else:
        _cancel_now(sub)
    log.info("subscription %s canceled (%s)", sub.id, "at period end" if at_period_end else "now")
    return sub


def get_subscription(session: Session, subscription_id: uuid.UUID) -> Subscription:
    sub = session.get(Subscription, subscription_id)
    if sub is None:
        raise NotFoundError("No such subscription", code="subscription_not_found")
    return sub


def list_subscriptions(session: Session, user_id: uuid.UUID) -> list[Subscription]:
    return list(
        session.scalars(
            select(Subscription)
            .where(Subscription.user_id == user_id)
            .order_by(Subscription.created_at.desc())
        )
    )


# --- reconciliation -----------------------------------------------------------------------


def stale_pending_orders(
    session: Session, *, older_than: float, limit: int = 200
) -> list[uuid.UUID]:
    cutoff = utcnow() - relativedelta(seconds=int(older_than))
    return list(
        session.scalars(
            select(Order.id)
            .where(Order.status == "pending", Order.created_at < cutoff)
            .order_by(Order.created_at)
            .limit(limit)
        )
    )


def order_ref(order: Order) -> OrderRef:
    return OrderRef(
        order_id=str(order.id),
        provider_order_id=order.provider_order_id,
        amount=order.amount,
        currency=order.currency,
    )


def expire_order(session: Session, order_id: uuid.UUID) -> None:
    order = session.get(Order, order_id, with_for_update=True)
    if order is not None and order.status == "pending":
        order.status = "canceled"
        order.flag = "expired unpaid"


def mark_order_failed(session: Session, order_id: uuid.UUID) -> None:
    order = session.get(Order, order_id, with_for_update=True)
    if order is not None and order.status == "pending":
        order.status = "failed"


def reconcile_order(session: Session, order_id: uuid.UUID, registry: Any, settings: Any) -> str:
    """Ask the provider about one pending order and apply what it says, through the same
    path as a webhook (``record_event``); commits its own work (no transaction is open
    during the provider call). Returns what was found. Shared by the beat task and
    ``vibebox orders reconcile``."""
    order = session.get(Order, order_id)
    if order is None or order.status != "pending":
        return "not pending"
    provider = registry.get(order.provider)
    if provider is None:
        return "provider disabled"
    ref = order_ref(order)
    session.rollback()
    try:
        answer = provider.query_order(ref)
    except PermanentError as exc:
        log.error("order %s: query at %s refused: %s", order_id, provider.name, exc)
        return "query refused"
    if answer.state is OrderState.PAID and answer.event is not None:
        try:
            record_event(session, answer.event)
        except AmountMismatchError:
            session.commit()
            return "amount mismatch"
        session.commit()
        log.warning("order %s was paid but no webhook arrived: fulfilled", order_id)
        return "paid"
    age = (utcnow() - order.created_at).total_seconds()
    if answer.state is OrderState.FAILED:
        mark_order_failed(session, order_id)
        session.commit()
        return "failed"
    if age > settings.order_expiry_seconds:
        try:
            provider.cancel_order(ref)
        except (TransientError, PermanentError) as exc:
            log.warning("order %s: close at %s failed: %s", order_id, provider.name, exc)
        expire_order(session, order_id)
        session.commit()
        return "expired"
    return answer.state.value
