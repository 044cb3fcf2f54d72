"""Getting the owner of a running VibeBox into its Happy account from the Happy apps.

- ``connect_info``: the embedded web URL (for clients that embed Happy's web app) and the
  secret key in the app's backup format (for "Restore with Secret Key").
- ``link_device``: approve a new Happy device from the ``happy:///account?...`` link it
  shows, as the app's "Link New Device" does.

Neither the token, the secret, the backup key nor a link ever reaches a log line or an error
message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import (
    HappyServerError,
    InvalidStateError,
    PermanentError,
    TransientError,
    ValidationError,
)
from app.integrations.happy import (
    HappyAPI,
    HappyCredentials,
    parse_device_link,
    secret_key_backup,
)
from app.models import VibeBox
from app.services.boxes import happy_accounts, status_document

log = logging.getLogger(__name__)


def _credentials(session: Session, settings: Settings, box: VibeBox) -> HappyCredentials:
    """The owner's Happy credentials; 409 ``vibebox_not_running`` unless the box runs."""
    status_document.connect_url(session, settings, box)  # the one "is it open yet" rule
    creds = happy_accounts.get_credentials(
        session, box.user_id, settings.encryption_key, server_url=settings.happy_realm(box.region)
    )
    if creds is None:  # connect_url already checked; only a concurrent wipe gets here
        raise InvalidStateError(
            f"The VibeBox is {box.status}; it can be opened once it is running",
            code="vibebox_not_running",
            extra={"status": box.status},
        )
    return creds


@dataclass(frozen=True)
class ConnectInfo:
    """The Happy web URL and the backup secret key of a running box (both are credentials:
    owner only; ``ConnectResponseSchema`` renders them)."""

    happy_web_url: str
    secret_key: str


def connect_info(session: Session, settings: Settings, box: VibeBox) -> ConnectInfo:
    """The web URL and secret key of a running box."""
    creds = _credentials(session, settings, box)
    return ConnectInfo(
        happy_web_url=status_document.web_url(settings, creds),
        secret_key=secret_key_backup(creds.secret),
    )


def link_device(
    session: Session, settings: Settings, box: VibeBox, device_link: str, happy: HappyAPI
) -> None:
    """Sign the device that shows ``device_link`` in to the owner's Happy account.

    422 (field ``deviceLink``) for a malformed link; 502 ``happy_link_failed`` when Happy
    refuses (e.g. it has no pending request for that device), 502 ``happy_unavailable``
    when it cannot be reached or fails.
    """
    creds = _credentials(session, settings, box)
    try:
        device_key = parse_device_link(device_link)
    except ValueError as exc:
        raise ValidationError(
            "The device link is not valid", errors={"deviceLink": [_sentence(str(exc))]}
        ) from None
    try:
        happy.approve_account_link(creds.token, creds.secret, device_key)
    except PermanentError as exc:
        log.warning("box %s: Happy refused a device link: %s", box.id, exc)
        raise HappyServerError(exc.safe_message, code="happy_link_failed") from None
    except TransientError as exc:
        log.warning("box %s: Happy failed a device link: %s", box.id, exc)
        raise HappyServerError(
            f"{exc.safe_message} The device was not linked; try again in a moment.",
            code="happy_unavailable",
        ) from None
    log.info("box %s: linked a Happy device to the owner's account", box.id)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
