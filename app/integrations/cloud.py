"""Cloud compute through Apache Libcloud: one small interface over its compute drivers.

Nothing outside this module sees a libcloud object: callers get :class:`CloudNode` and
:class:`TransientError` / :class:`PermanentError` with safe messages.

Identity: every node we create is named ``vibebox-<server id>`` and tagged ``vibebox`` and
``vibebox-server-<server id>`` (where the driver has tags; EC2 gets them as instance tags).
:meth:`LibcloudCompute.list_nodes` with a tag finds nodes by tag or, for drivers without
tags, by that name, so creation can look first and never make a second node for one server.

Drivers: ``digitalocean`` (v2 API, end to end in the tests), ``ec2``, ``vultr`` (API v2),
``linode`` (API v4), ``aliyun_ecs`` (the others: the real drivers against API doubles,
tests/integrations/test_cloud_drivers.py). Credentials: ``{"key": ...}`` for DigitalOcean,
Vultr and Linode; ``{"key": access key id, "secret": ...}`` for EC2 and Alibaba ECS, ECS
plus ``securityGroupId`` (required), ``vSwitchId``, ``zoneId``, ``systemDiskCategory``,
``internetMaxBandwidthOut`` and ``internetChargeType``.

SSH keys: DigitalOcean and Vultr take a registered key id, EC2 a key pair name; Linode
takes the public key itself at create time; ECS (no key pairs in libcloud) gets it through
the cloud-init ``user_data`` every create carries (each driver's own user-data field).

Size (over 400 lines, on purpose): the per-driver differences of five libcloud drivers
(tags, sizes, images, credentials, error shapes) are the whole point of this adapter; the
rest of the code sees one small interface.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from app.errors import PermanentError, TransientError

log = logging.getLogger(__name__)

TAG = "vibebox"
NAME_PREFIX = "vibebox-"

# Typical time from "create" to SSH answering, per driver (shown to the waiting customer).
EXPECTED_BOOT_SECONDS = {
    "digitalocean": 60,
    "ec2": 90,
    "vultr": 90,
    "linode": 90,
    "aliyun_ecs": 120,
}
DRIVERS = tuple(EXPECTED_BOOT_SECONDS)

# Alibaba ECS: outbound public bandwidth (Mbps) when the provider does not set
# internetMaxBandwidthOut; above 0, RunInstances gives the instance a public IPv4.
ECS_BANDWIDTH_OUT_MBPS = 5


def node_name(server_id: object) -> str:
    return f"{NAME_PREFIX}{server_id}"


def server_tag(server_id: object) -> str:
    return f"{TAG}-server-{server_id}"


def tags_for(server_id: object) -> list[str]:
    return [TAG, server_tag(server_id)]


@dataclass(frozen=True)
class CloudNode:
    """A node as the capacity service needs it."""

    id: str
    name: str
    state: str  # libcloud's NodeState name: running, pending, ...
    public_ips: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    size: str | None = None

    @property
    def server_id(self) -> str | None:
        """Our server id, from the tag or the name (None: not one of ours)."""
        prefix = f"{TAG}-server-"
        for tag in self.tags:
            if tag.startswith(prefix):
                return tag[len(prefix) :]
        if self.name.startswith(NAME_PREFIX):
            return self.name[len(NAME_PREFIX) :]
        return None


@dataclass(frozen=True)
class CloudAccount:
    """How to reach one provider's API (credentials already decrypted)."""

    driver: str
    credentials: dict[str, str] = field(repr=False)
    region: str
    api_base_url: str | None = None
    timeout: float = 30.0


class CloudCompute(Protocol):
    """What the capacity service uses (tests may pass a fake)."""

    expected_boot_seconds: int

    def create_node(
        self,
        *,
        name: str,
        size: str,
        image: str,
        ssh_key_id: str | None,
        tags: list[str],
        user_data: str | None = None,
    ) -> CloudNode: ...

    def list_nodes(self, tag: str | None = None) -> list[CloudNode]: ...

    def get_node(self, node_id: str) -> CloudNode | None: ...

    def destroy_node(self, node_id: str) -> None: ...

    def register_key(self, name: str, public_key: str) -> str: ...


# --- errors --------------------------------------------------------------------------------


class CloudRateLimitedError(TransientError):
    """429: retry after ``retry_after`` seconds (from Retry-After or ratelimit-reset)."""

    def __init__(self, message: str, *, retry_after: float, safe_message: str) -> None:
        super().__init__(message, safe_message=safe_message)
        self.retry_after = retry_after


def _retry_after(headers: dict[str, Any] | None) -> float:
    headers = {str(k).lower(): v for k, v in (headers or {}).items()}
    raw = headers.get("retry-after")
    if raw not in (None, "", "0"):
        try:
            return max(float(raw), 0.0)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(str(raw))
            return max(parsed.timestamp() - time.time(), 0.0)
    reset = headers.get("ratelimit-reset")  # DigitalOcean: epoch seconds
    if reset:
        try:
            return max(float(reset) - time.time(), 0.0)
        except ValueError:
            pass
    return 0.0


_QUOTA_WORDS = ("quota", "limit", "exceeded", "insufficient")


# "Status code: 503." (Linode v4), "(code: 404)" (DigitalOcean), "(429) ..." (Vultr)
_STATUS_IN_TEXT = re.compile(r"(?:Status code: |\(code: |^\()(\d{3})\b")

# Errors a driver raises before any HTTP answer: our request does not fit the driver or the
# provider (a missing or malformed setting). Retrying cannot help; an operator must act.
_MISCONFIGURATION = (NotImplementedError, TypeError, AttributeError, ValueError)


def _status_of(exc: BaseException) -> int | None:
    """The HTTP status behind a libcloud error, wherever the driver put it."""
    for attr in ("code", "http_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    found = _STATUS_IN_TEXT.search(str(getattr(exc, "value", None) or exc))
    return int(found.group(1)) if found else None


def _by_status(code: int, message: str, what: str, headers: dict[str, Any] | None) -> Exception:
    if code == 429:
        return CloudRateLimitedError(
            f"{what}: rate limited",
            retry_after=_retry_after(headers),
            safe_message="The cloud provider asked us to slow down; retrying.",
        )
    if code >= 500 or code == 408:  # server trouble, request timeout
        return TransientError(
            f"{what}: HTTP {code} {message}",
            safe_message="The cloud provider had a temporary problem; retrying.",
        )
    if any(word in message.lower() for word in _QUOTA_WORDS):
        return PermanentError(
            f"{what}: quota: HTTP {code} {message}",
            safe_message="The cloud provider refused: account quota or limit reached.",
        )
    return PermanentError(
        f"{what}: HTTP {code} {message}", safe_message="The cloud provider refused the request."
    )


def translate(exc: BaseException, what: str) -> Exception:
    """A libcloud / requests / socket error as TransientError or PermanentError.

    Transient (retried with backoff): 429 (with its retry hint), 5xx, 408, network
    failures, a garbled answer (``MalformedResponseError``: a proxy's error page). Permanent
    (the request is given up and the provider paused by the capacity code): refused
    credentials, any other 4xx, and errors raised before or without an HTTP status (a plain
    ``LibcloudError``, ``NotImplementedError``, ``TypeError``...): misconfiguration that
    would only loop if retried; the message says what the driver objected to.
    """
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import (
        InvalidCredsError,
        LibcloudError,
        MalformedResponseError,
        ServiceUnavailableError,
    )

    if isinstance(exc, (TransientError, PermanentError)):
        return exc
    if isinstance(exc, RateLimitReachedError):
        wait = float(getattr(exc, "retry_after", 0) or 0) or _retry_after(exc.headers)
        return CloudRateLimitedError(
            f"{what}: rate limited (retry after {wait:.0f}s)",
            retry_after=wait,
            safe_message="The cloud provider asked us to slow down; retrying.",
        )
    if isinstance(exc, InvalidCredsError):
        return PermanentError(
            f"{what}: credentials refused",
            safe_message="The cloud provider refused our credentials.",
        )
    if isinstance(exc, BaseHTTPError):
        code = int(getattr(exc, "code", 0) or 0)
        message = str(getattr(exc, "message", "") or "")[:300]
        if code == 0:
            return TransientError(
                f"{what}: HTTP ? {message}",
                safe_message="The cloud provider had a temporary problem; retrying.",
            )
        return _by_status(code, message, what, exc.headers)
    if isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith(
        ("requests", "urllib3")
    ):
        return TransientError(
            f"{what}: {type(exc).__name__}: {exc}",
            safe_message="Could not reach the cloud provider; retrying.",
        )
    if isinstance(exc, (MalformedResponseError, ServiceUnavailableError)):
        return TransientError(
            f"{what}: {type(exc).__name__}: {str(getattr(exc, 'value', exc))[:300]}",
            safe_message="The cloud provider had a temporary problem; retrying.",
        )
    text = str(getattr(exc, "value", None) or exc)[:300]
    status = _status_of(exc)
    if status is not None:  # Linode's and Vultr's errors carry the status in their own way
        return _by_status(status, text, what, getattr(exc, "headers", None))
    if isinstance(exc, (LibcloudError, *_MISCONFIGURATION)) or type(exc).__module__.startswith(
        "libcloud"
    ):
        if any(word in text.lower() for word in _QUOTA_WORDS):
            return PermanentError(
                f"{what}: {text}",
                safe_message="The cloud provider refused: account quota or limit reached.",
            )
        return PermanentError(
            f"{what}: {type(exc).__name__}: {text}",
            safe_message="The cloud provider rejected the request: check the provider's "
            "settings (driver, region, image, size, credentials).",
        )
    return TransientError(
        f"{what}: {type(exc).__name__}: {exc}", safe_message="The cloud provider failed; retrying."
    )


def _guard(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # every library error becomes ours
        raise translate(exc, what) from None


# --- libcloud -------------------------------------------------------------------------------


def _node_tags(node: Any) -> tuple[str, ...]:
    raw = (node.extra or {}).get("tags") or ()
    if isinstance(raw, dict):  # EC2, ECS: key -> value
        return tuple(k if v in ("", None, "1", "true") else f"{k}={v}" for k, v in raw.items())
    if isinstance(raw, str):
        return (raw,)
    found = tuple(str(t) for t in raw)
    single = (node.extra or {}).get("tag")  # Vultr: one tag
    return found + ((str(single),) if single else ())


_NO_ADDRESS = ("0.0.0.0", "::")  # noqa: S104 (addresses a driver reports, not a bind)


def _to_node(node: Any) -> CloudNode:
    state = getattr(node.state, "value", None) or str(node.state)
    extra = node.extra or {}
    size = extra.get("size_slug") or extra.get("instance_type") or extra.get("plan")
    size = size or (extra.get("size") if isinstance(extra.get("size"), str) else None)
    return CloudNode(
        id=str(node.id),
        name=str(node.name or ""),
        state=str(state).lower(),
        # Vultr reports 0.0.0.0 until the address is assigned.
        public_ips=tuple(ip for ip in (node.public_ips or []) if ip and ip not in _NO_ADDRESS),
        tags=_node_tags(node),
        size=size,
    )


def _has_tag(node: CloudNode, tag: str) -> bool:
    if tag in node.tags:
        return True
    # Drivers without tags: our name says which server the node is for.
    if tag == TAG:
        return node.server_id is not None
    return node.server_id is not None and tag == server_tag(node.server_id)


def build_driver(account: CloudAccount) -> Any:
    """The libcloud NodeDriver for ``account`` (no network call)."""
    from libcloud.compute.providers import Provider, get_driver

    creds = account.credentials
    key = creds.get("key") or ""
    base = urlparse(account.api_base_url) if account.api_base_url else None
    host_kwargs: dict[str, Any] = {}
    if base is not None and account.driver != "digitalocean":
        host_kwargs = {
            "host": base.hostname,
            "port": base.port or (443 if base.scheme == "https" else 80),
            "secure": base.scheme == "https",
        }
    if account.driver == "digitalocean":
        driver = get_driver(Provider.DIGITAL_OCEAN)(key, api_version="v2")
    elif account.driver == "ec2":
        driver = get_driver(Provider.EC2)(
            key, creds.get("secret") or "", region=account.region, **host_kwargs
        )
    elif account.driver == "vultr":
        driver = get_driver(Provider.VULTR)(key, api_version="2", **host_kwargs)
    elif account.driver == "linode":
        driver = get_driver(Provider.LINODE)(key, api_version="4.0", **host_kwargs)
    elif account.driver == "aliyun_ecs":
        driver = get_driver(Provider.ALIYUN_ECS)(
            key, creds.get("secret") or "", region=account.region, **host_kwargs
        )
    else:
        raise PermanentError(f"unknown cloud driver {account.driver!r}")
    connection = driver.connection
    connection.timeout = account.timeout
    if base is not None and account.driver == "digitalocean":
        # libcloud 3.9's DigitalOcean driver refuses host=/port=; set them afterwards.
        secure = base.scheme == "https"
        port = base.port or (443 if secure else 80)
        host = base.hostname or ""
        connection.host, connection.port, connection.secure = host, port, secure
        connection.connect(host, port)
    return driver


class LibcloudCompute:
    """:class:`CloudCompute` over a libcloud driver."""

    def __init__(self, account: CloudAccount, driver: Any | None = None) -> None:
        self.account = account
        self.driver = driver if driver is not None else build_driver(account)
        self.expected_boot_seconds = EXPECTED_BOOT_SECONDS.get(account.driver, 90)

    # --- reading --------------------------------------------------------------------------

    def list_nodes(self, tag: str | None = None) -> list[CloudNode]:
        """Nodes of the account (in its region where the driver is regional), optionally
        only those with ``tag`` (DigitalOcean filters on the server, ``tag_name``)."""
        if self.account.driver == "digitalocean" and tag is not None:
            return _guard("list nodes", lambda: self._do_list_by_tag(tag))
        if self.account.driver == "ec2" and tag is not None:
            raw = _guard("list nodes", lambda: self.driver.list_nodes(ex_filters={"tag-key": tag}))
        elif self.account.driver == "vultr":  # instances only, not bare-metal machines
            raw = _guard("list nodes", lambda: self.driver.list_nodes(ex_list_bare_metals=False))
        else:
            raw = _guard("list nodes", self.driver.list_nodes)
        nodes = [_to_node(n) for n in raw]
        return [n for n in nodes if tag is None or _has_tag(n, tag)]

    def _do_list_by_tag(self, tag: str) -> list[CloudNode]:
        # GET /v2/droplets?tag_name=..., following links.pages.next.
        nodes: list[CloudNode] = []
        params: dict[str, Any] = {"tag_name": tag, "page": 1}
        for _ in range(1000):
            data = self.driver.connection.request("/v2/droplets", params=params).object
            nodes.extend(_to_node(self.driver._to_node(d)) for d in data.get("droplets", []))
            following = ((data.get("links") or {}).get("pages") or {}).get("next")
            if not following:
                break
            page = parse_qs(urlparse(following).query).get("page", [None])[0]
            if page is None:
                break
            params = {"tag_name": tag, "page": int(page)}
        return nodes

    def get_node(self, node_id: str) -> CloudNode | None:
        """The node, or None when the provider no longer knows it."""
        if self.account.driver == "digitalocean":
            try:
                return _to_node(self.driver.ex_get_node_details(node_id))
            except Exception as exc:
                if getattr(exc, "code", None) == 404 or "(code: 404)" in str(exc):
                    return None
                raise translate(exc, "get node") from None
        return next((n for n in self.list_nodes() if n.id == node_id), None)

    # --- changing ---------------------------------------------------------------------------

    def create_node(
        self,
        *,
        name: str,
        size: str,
        image: str,
        ssh_key_id: str | None,
        tags: list[str],
        user_data: str | None = None,
    ) -> CloudNode:
        """Create a node; with ``tags`` containing a server tag, a node already carrying it
        is returned instead (idempotent). ``user_data`` (cloud-init, plain text) goes to the
        driver's own user-data field (each driver encodes it as its API wants)."""
        ours = [t for t in tags if t.startswith(f"{TAG}-server-")]
        if ours:
            found = self.list_nodes(tag=ours[0])
            if found:
                return found[0]
        if self.account.driver == "aliyun_ecs":
            return _guard("create node", lambda: self._ecs_run(name, size, image, tags, user_data))
        return _to_node(
            _guard(
                "create node", lambda: self._create(name, size, image, ssh_key_id, tags, user_data)
            )
        )

    def _create(
        self,
        name: str,
        size: str,
        image: str,
        ssh_key_id: str | None,
        tags: list[str],
        user_data: str | None,
    ) -> Any:
        from libcloud.compute.base import NodeImage, NodeLocation, NodeSize

        d = self.driver
        size_obj = NodeSize(size, size, 0, 0, 0, 0, d)
        image_obj = NodeImage(image, image, d)
        location = NodeLocation(self.account.region, self.account.region, "", d)
        keys = [ssh_key_id] if ssh_key_id else []
        kind = self.account.driver
        if kind == "digitalocean":
            attrs: dict[str, Any] = {"tags": tags}
            if keys:
                attrs["ssh_keys"] = [int(k) if k.isdigit() else k for k in keys]
            return d.create_node(
                name, size_obj, image_obj, location, ex_create_attr=attrs, ex_user_data=user_data
            )
        if kind == "ec2":
            # The key pair is named (ex_keyname); tags become instance tags (with Name).
            return d.create_node(
                name=name,
                size=size_obj,
                image=image_obj,
                ex_keyname=ssh_key_id,
                ex_userdata=user_data,
                ex_metadata={t: "1" for t in tags},
                ex_clienttoken=name[:64],  # EC2's own idempotency token
            )
        if kind == "vultr":
            return d.create_node(
                name,
                size_obj,
                location,
                image_obj,
                ex_ssh_key_ids=keys or None,
                ex_userdata=user_data,
                ex_tag=tags[-1],
                ex_hostname=name,
            )
        if kind == "linode":
            # Linode insists on a root password with an image: a random one, never stored
            # nor logged (login is by key; cloud-init may lock it). The key itself goes in
            # authorized_keys (Linode has no key id to name).
            public_key = self.account.credentials.get("publicKey", "")
            return d.create_node(
                location=location,
                name=name,
                size=size_obj,
                image=image_obj,
                root_pass=_random_root_password(),
                ex_authorized_keys=[public_key] if public_key else None,
                ex_tags=tags,
                ex_userdata=user_data,
            )
        raise PermanentError(f"unknown cloud driver {kind!r}")

    def _ecs_run(
        self, name: str, size: str, image: str, tags: list[str], user_data: str | None
    ) -> CloudNode:
        """Alibaba ECS: ``RunInstances`` through the driver's signed connection.

        libcloud's ECS ``create_node`` uses ``CreateInstance``, which takes no user data,
        assigns no public address in a VPC and blocks until the node runs; ``RunInstances``
        creates and starts the instance, gives it a public IPv4 when
        ``InternetMaxBandwidthOut`` > 0, takes ``UserData`` (our SSH key: the driver has no
        key pairs) and tags, and is idempotent by ``ClientToken``.
        """
        creds = self.account.credentials
        group = creds.get("securityGroupId")
        if not group:
            raise PermanentError(
                "aliyun_ecs: the credentials need securityGroupId",
                safe_message="Alibaba ECS needs a security group (securityGroupId).",
            )
        params: dict[str, Any] = {
            "Action": "RunInstances",
            "RegionId": self.account.region,
            "ImageId": image,
            "InstanceType": size,
            "InstanceName": name,
            "HostName": name,
            "SecurityGroupId": group,
            "InternetChargeType": creds.get("internetChargeType") or "PayByTraffic",
            "InternetMaxBandwidthOut": str(
                int(creds.get("internetMaxBandwidthOut") or ECS_BANDWIDTH_OUT_MBPS)
            ),
            "Amount": "1",
            "ClientToken": name[:64],
        }
        if creds.get("vSwitchId"):
            params["VSwitchId"] = creds["vSwitchId"]
        if creds.get("zoneId"):
            params["ZoneId"] = creds["zoneId"]
        if creds.get("systemDiskCategory"):
            params["SystemDisk.Category"] = creds["systemDiskCategory"]
        if user_data:
            params["UserData"] = base64.b64encode(user_data.encode()).decode()
        for n, tag in enumerate(tags, start=1):
            params[f"Tag.{n}.Key"] = tag
            params[f"Tag.{n}.Value"] = "1"
        d = self.driver
        answer = d.connection.request(d.path, params=params).object
        ids = [e.text for e in answer.iter() if e.tag.endswith("InstanceIdSet") and e.text]
        if not ids:
            raise PermanentError(
                "aliyun_ecs: RunInstances answered without an instance id",
                safe_message="The cloud provider did not say which server it created.",
            )
        found = d.list_nodes(ex_node_ids=[ids[0]])
        if found:
            return _to_node(found[0])
        return CloudNode(id=ids[0], name=name, state="pending", tags=tuple(tags))

    def destroy_node(self, node_id: str) -> None:
        """Destroy the node; one the provider no longer knows counts as destroyed."""
        from libcloud.compute.base import Node, NodeSize
        from libcloud.compute.types import NodeState

        # A size with an id: Vultr looks at it to tell instances from bare metal.
        size = NodeSize("", "", 0, 0, 0, 0, self.driver)
        node = Node(node_id, "", NodeState.UNKNOWN, [], [], self.driver, size=size)
        try:
            if self.account.driver == "aliyun_ecs":
                # libcloud stops the instance and waits; DeleteInstance Force does it at once.
                params = {"Action": "DeleteInstance", "InstanceId": node_id, "Force": "true"}
                self.driver.connection.request(self.driver.path, params=params)
            else:
                self.driver.destroy_node(node)
        except Exception as exc:
            if _status_of(exc) == 404 or "NotFound" in str(exc):
                return
            raise translate(exc, "destroy node") from None

    def register_key(self, name: str, public_key: str) -> str:
        """Register our SSH public key with the provider; returns what ``create_node`` takes
        as ``ssh_key_id`` (the existing key when one of that name is already there): the
        key id (DigitalOcean, Vultr), the key pair NAME (EC2's ``KeyName``), or ``name``
        itself for drivers without key import (Linode takes the key at create time, Alibaba
        ECS gets it through cloud-init user data)."""
        kind = self.account.driver
        if kind == "digitalocean":
            return str(_guard("register key", lambda: self._do_register(name, public_key)))
        if kind in ("linode", "aliyun_ecs"):
            return name

        def register() -> str:
            pair = next((p for p in self.driver.list_key_pairs() if p.name == name), None)
            if pair is None:
                pair = self.driver.import_key_pair_from_string(name, public_key)
            if kind == "ec2":
                return str(pair.name)
            return str((pair.extra or {}).get("id") or pair.name)

        return str(_guard("register key", register))

    def _do_register(self, name: str, public_key: str) -> str:
        for pair in self.driver.list_key_pairs():
            if pair.name == name:
                return str(pair.extra.get("id"))
        pair = self.driver.create_key_pair(name, public_key)
        return str(pair.extra.get("id"))


def _random_root_password() -> str:
    """A strong throwaway password (Linode requires one with an image): 32 random URL-safe
    characters plus one of each class Linode's strength check counts."""
    return secrets.token_urlsafe(24) + "aZ9#"


def connect(account: CloudAccount) -> CloudCompute:
    return LibcloudCompute(account)


def nodes_by_server(nodes: Iterable[CloudNode]) -> dict[str, list[CloudNode]]:
    out: dict[str, list[CloudNode]] = {}
    for node in nodes:
        if node.server_id is not None:
            out.setdefault(node.server_id, []).append(node)
    return out
