"""Small, protocol-faithful doubles of the EC2, Vultr (v2), Linode (v4) and Alibaba ECS APIs:
just what app.integrations.cloud asks of libcloud's REAL drivers, answered in the shapes
those drivers parse (paths, methods, JSON / XML documents and error bodies read from the
drivers in libcloud 3.9). Every request is recorded (method, path, query, body) so a test can
assert what the driver actually sent; ``fail_next`` arms canned error answers.

Each double is one :class:`ProviderDouble` (a threaded HTTP server on 127.0.0.1) with an
``answer(seen) -> Reply`` of its own and an in-memory list of nodes and keys. No signature
or token is checked: these tests are about what we send and how we read the answers.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

from tests.support.http_double import DoubleRequestHandler, ThreadedHTTPDouble


@dataclass(frozen=True)
class Seen:
    """One request as the double received it."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body or b"null")

    @property
    def params(self) -> dict[str, str]:
        """Query-API parameters (EC2, ECS): from the query string or a form body."""
        form = {k: v[0] for k, v in parse_qs(self.body.decode(errors="replace")).items()}
        return {**self.query, **form}


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, doc: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(doc).encode(), "application/json", headers or {})


def xml_reply(status: int, text: str) -> Reply:
    return Reply(status, text.encode(), "text/xml")


class ProviderDouble(ThreadedHTTPDouble):
    """A provider API on 127.0.0.1: ``answer`` decides, ``requests`` records."""

    _thread_name = "provider-double"

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.requests: list[Seen] = []
        self.failures: list[Reply] = []
        self.ids = itertools.count(1001)

    def fail_next(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies`` (in order) instead."""
        with self.lock:
            self.failures.extend(replies)

    def answer(self, seen: Seen) -> Reply:  # pragma: no cover - every double overrides it
        raise NotImplementedError

    def sent(self, method: str, path_start: str = "/") -> list[Seen]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_start)]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(DoubleRequestHandler):
            def _any(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                seen = Seen(self.command, url.path, query, self.read_body())
                with double.lock:
                    double.requests.append(seen)
                    failure = double.failures.pop(0) if double.failures else None
                reply = failure or double.answer(seen)
                self.send_body(reply.status, reply.body, reply.content_type, reply.headers)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        return Handler


# --- Vultr API v2 ---------------------------------------------------------------------------


class VultrDouble(ProviderDouble):
    """``/v2/ssh-keys`` (GET, POST), ``/v2/instances`` (GET, POST), ``/v2/instances/<id>``
    (DELETE). Errors: ``{"error": ..., "status": ...}``."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[dict[str, Any]] = []
        self.instances: dict[str, dict[str, Any]] = {}

    @staticmethod
    def error(status: int, message: str) -> Reply:
        return json_reply(status, {"error": message, "status": status})

    def _page(self, key: str, items: list[Any]) -> Reply:
        meta = {"total": len(items), "links": {"next": "", "prev": ""}}
        return json_reply(200, {key: items, "meta": meta})

    def answer(self, seen: Seen) -> Reply:
        with self.lock:
            if seen.path == "/v2/ssh-keys" and seen.method == "GET":
                return self._page("ssh_keys", list(self.keys))
            if seen.path == "/v2/ssh-keys" and seen.method == "POST":
                body = seen.json
                key = {
                    "id": f"key-{next(self.ids)}",
                    "date_created": "2026-01-01T00:00:00+00:00",
                    "name": body["name"],
                    "ssh_key": body["ssh_key"],
                }
                self.keys.append(key)
                return json_reply(201, {"ssh_key": key})
            if seen.path == "/v2/instances" and seen.method == "GET":
                return self._page("instances", list(self.instances.values()))
            if seen.path == "/v2/instances" and seen.method == "POST":
                body = seen.json
                if body.get("plan") == "no-such-plan":
                    return self.error(400, "Invalid plan chosen.")
                doc = self.instance_doc(f"inst-{next(self.ids)}", body)
                self.instances[doc["id"]] = doc
                return json_reply(202, {"instance": doc})
            if seen.path.startswith("/v2/instances/") and seen.method == "DELETE":
                if self.instances.pop(seen.path.rsplit("/", 1)[1], None) is None:
                    return self.error(404, "Invalid instance-id.")
                return Reply(204, b"", None)
        return self.error(404, "Not found")

    @staticmethod
    def instance_doc(instance_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": instance_id,
            "label": body["label"],
            "main_ip": "0.0.0.0",
            "v6_main_ip": "",
            "plan": body["plan"],
            "os_id": int(body.get("os_id") or 0),
            "date_created": "2026-01-01T00:00:00+00:00",
            "region": body["region"],
            "ram": 2048,
            "disk": 55,
            "netmask_v4": "",
            "gateway_v4": "0.0.0.0",
            "v6_network": "",
            "v6_network_size": 0,
            "app_id": 0,
            "image_id": "",
            "features": [],
            "tag": body.get("tag", ""),
            "os": "Ubuntu 24.04 LTS x64",
            "status": "pending",
            "power_status": "running",
            "vcpu_count": 1,
            "allowed_bandwidth": 2,
            "server_status": "none",
            "firewall_group_id": "",
            "internal_ip": "",
        }


# --- Linode API v4 --------------------------------------------------------------------------


class LinodeDouble(ProviderDouble):
    """``/v4/linode/instances`` (GET paginated, POST), ``/v4/linode/instances/<id>``
    (DELETE). Errors: ``{"errors": [{"reason": ..., "field": ...}]}``; POST without
    ``root_pass`` while giving an image is refused, as Linode does."""

    def __init__(self) -> None:
        super().__init__()
        self.instances: dict[int, dict[str, Any]] = {}

    @staticmethod
    def error(status: int, reason: str, field_name: str | None = None) -> Reply:
        error: dict[str, Any] = {"reason": reason}
        if field_name:
            error["field"] = field_name
        return json_reply(status, {"errors": [error]})

    def answer(self, seen: Seen) -> Reply:
        with self.lock:
            if seen.path == "/v4/linode/instances" and seen.method == "GET":
                items = list(self.instances.values())
                return json_reply(
                    200, {"data": items, "page": 1, "pages": 1, "results": len(items)}
                )
            if seen.path == "/v4/linode/instances" and seen.method == "POST":
                body = seen.json
                if body.get("image") and not body.get("root_pass"):
                    return self.error(400, "root_pass is required", "root_pass")
                if body.get("type") == "no-such-type":
                    return self.error(400, "A valid plan type by that ID was not found", "type")
                doc = self.instance_doc(next(self.ids), body)
                self.instances[doc["id"]] = doc
                return json_reply(200, doc)
            if seen.path.startswith("/v4/linode/instances/") and seen.method == "DELETE":
                if self.instances.pop(int(seen.path.rsplit("/", 1)[1]), None) is None:
                    return self.error(404, "Not found")
                return json_reply(200, {})
        return self.error(404, "Not found")

    @staticmethod
    def instance_doc(instance_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": instance_id,
            "label": body["label"],
            "status": "provisioning",
            "ipv4": ["203.0.113.20", "192.168.130.2"],
            "ipv6": "2600:3c00::f03c:91ff:fe24:3a2f/128",
            "type": body["type"],
            "image": body.get("image"),
            "region": body["region"],
            "created": "2026-01-01T00:00:00",
            "tags": list(body.get("tags") or []),
            "hypervisor": "kvm",
            "specs": {"disk": 51200, "memory": 2048, "vcpus": 1, "transfer": 2000},
            "alerts": {},
            "backups": {"enabled": False},
            "watchdog_enabled": True,
        }


# --- EC2 (Query API, XML) -------------------------------------------------------------------

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"


class EC2Double(ProviderDouble):
    """The Query API at ``/``: ``DescribeKeyPairs``, ``ImportKeyPair``, ``RunInstances``,
    ``DescribeInstances`` (``tag-key`` filter), ``DescribeAddresses``,
    ``TerminateInstances``. Errors: ``<Response><Errors><Error><Code>..``."""

    def __init__(self) -> None:
        super().__init__()
        self.key_pairs: dict[str, str] = {}  # name -> fingerprint
        self.instances: dict[str, dict[str, Any]] = {}

    @staticmethod
    def error(status: int, code: str, message: str) -> Reply:
        return xml_reply(
            status,
            f"<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message>"
            "</Error></Errors><RequestID>req-1</RequestID></Response>",
        )

    def _doc(self, action: str, inner: str) -> Reply:
        return xml_reply(
            200,
            f'<{action}Response xmlns="{EC2_NS}"><requestId>req-1</requestId>{inner}'
            f"</{action}Response>",
        )

    @staticmethod
    def _instance_xml(inst: dict[str, Any]) -> str:
        tags = "".join(
            f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>"
            for k, v in inst["tags"].items()
        )
        address = f"<ipAddress>{inst['ip']}</ipAddress>" if inst.get("ip") else ""
        return (
            f"<item><instanceId>{inst['id']}</instanceId><imageId>{inst['image']}</imageId>"
            f"<instanceState><code>0</code><name>{inst['state']}</name></instanceState>"
            f"<instanceType>{inst['type']}</instanceType><keyName>{inst['key']}</keyName>"
            f"<launchTime>2026-01-01T00:00:00.000Z</launchTime>{address}"
            f"<privateIpAddress>10.0.0.5</privateIpAddress><tagSet>{tags}</tagSet></item>"
        )

    def answer(self, seen: Seen) -> Reply:
        p = seen.params
        action = p.get("Action", "")
        with self.lock:
            if action == "DescribeKeyPairs":
                items = "".join(
                    f"<item><keyName>{escape(n)}</keyName><keyFingerprint>{f}</keyFingerprint>"
                    "</item>"
                    for n, f in self.key_pairs.items()
                )
                return self._doc(action, f"<keySet>{items}</keySet>")
            if action == "ImportKeyPair":
                base64.b64decode(p["PublicKeyMaterial"], validate=True)
                fingerprint = "1f:51:ae:28:bf:89:e9:d8:1f:25:5d:37:2d:7d:b8:ca"
                self.key_pairs[p["KeyName"]] = fingerprint
                return self._doc(
                    action,
                    f"<keyName>{escape(p['KeyName'])}</keyName>"
                    f"<keyFingerprint>{fingerprint}</keyFingerprint>",
                )
            if action == "RunInstances":
                if p.get("KeyName") and p["KeyName"] not in self.key_pairs:
                    return self.error(
                        400,
                        "InvalidKeyPair.NotFound",
                        f"The key pair '{p['KeyName']}' does not exist",
                    )
                if p.get("InstanceType") == "no.such":
                    return self.error(
                        400, "InvalidParameterValue", "Invalid value 'no.such' for InstanceType."
                    )
                tags = {}
                for n in itertools.count(1):
                    key = p.get(f"TagSpecification.1.Tag.{n}.Key")
                    if key is None:
                        break
                    tags[key] = p.get(f"TagSpecification.1.Tag.{n}.Value", "")
                inst = {
                    "id": f"i-{next(self.ids):017x}",
                    "image": p["ImageId"],
                    "type": p["InstanceType"],
                    "key": p.get("KeyName", ""),
                    "state": "pending",
                    "tags": tags,
                }
                self.instances[inst["id"]] = inst
                return self._doc(
                    action,
                    "<reservationId>r-1</reservationId><ownerId>1</ownerId>"
                    f"<instancesSet>{self._instance_xml(inst)}</instancesSet>",
                )
            if action == "DescribeInstances":
                wanted = None
                if p.get("Filter.1.Name") == "tag-key":
                    wanted = p.get("Filter.1.Value.1")
                found = [
                    i for i in self.instances.values() if wanted is None or wanted in i["tags"]
                ]
                items = "".join(self._instance_xml(i) for i in found)
                reservation = (
                    "<item><reservationId>r-1</reservationId><ownerId>1</ownerId>"
                    f"<instancesSet>{items}</instancesSet></item>"
                    if found
                    else ""
                )
                return self._doc(action, f"<reservationSet>{reservation}</reservationSet>")
            if action == "DescribeAddresses":
                return self._doc(action, "<addressesSet/>")
            if action == "TerminateInstances":
                instance_id = p.get("InstanceId.1", "")
                if self.instances.pop(instance_id, None) is None:
                    return self.error(
                        400,
                        "InvalidInstanceID.NotFound",
                        f"The instance ID '{instance_id}' does not exist",
                    )
                return self._doc(
                    action,
                    f"<instancesSet><item><instanceId>{instance_id}</instanceId>"
                    "<currentState><code>32</code><name>shutting-down</name></currentState>"
                    "<previousState><code>16</code><name>running</name></previousState>"
                    "</item></instancesSet>",
                )
        return self.error(400, "InvalidAction", f"The action {action} is not valid")


# --- Alibaba Cloud ECS (RPC API, XML) -------------------------------------------------------


class ECSDouble(ProviderDouble):
    """The RPC API at ``/``: ``RunInstances``, ``DescribeInstances`` (``InstanceIds``),
    ``DeleteInstance``. Errors: ``<Error><Code>..</Code><Message>..``. RunInstances without
    ``SecurityGroupId`` is refused, as ECS does."""

    def __init__(self) -> None:
        super().__init__()
        self.instances: dict[str, dict[str, Any]] = {}

    @staticmethod
    def error(status: int, code: str, message: str) -> Reply:
        return xml_reply(
            status,
            f"<Error><RequestId>req-1</RequestId><HostId>ecs.aliyuncs.com</HostId>"
            f"<Code>{code}</Code><Message>{escape(message)}</Message></Error>",
        )

    def _doc(self, action: str, inner: str) -> Reply:
        return xml_reply(
            200, f"<{action}Response><RequestId>req-1</RequestId>{inner}</{action}Response>"
        )

    @staticmethod
    def _instance_xml(inst: dict[str, Any]) -> str:
        return (
            f"<Instance><InstanceId>{inst['id']}</InstanceId>"
            f"<InstanceName>{escape(inst['name'])}</InstanceName>"
            f"<InstanceType>{inst['type']}</InstanceType><ImageId>{inst['image']}</ImageId>"
            f"<RegionId>{inst['region']}</RegionId><Status>{inst['status']}</Status>"
            f"<PublicIpAddress><IpAddress>{inst['ip']}</IpAddress></PublicIpAddress>"
            "<InnerIpAddress/><VpcAttributes><PrivateIpAddress><IpAddress>172.16.0.9"
            "</IpAddress></PrivateIpAddress></VpcAttributes></Instance>"
        )

    def answer(self, seen: Seen) -> Reply:
        p = seen.params
        action = p.get("Action", "")
        with self.lock:
            if action == "RunInstances":
                if not p.get("SecurityGroupId"):
                    return self.error(
                        400, "MissingParameter", "The input parameter SecurityGroupId is missing"
                    )
                if p.get("InstanceType") == "ecs.no-such":
                    return self.error(
                        400, "InvalidInstanceType.NotFound", "The specified InstanceType is invalid"
                    )
                inst = {
                    "id": f"i-{next(self.ids)}",
                    "name": p["InstanceName"],
                    "type": p["InstanceType"],
                    "image": p["ImageId"],
                    "region": p["RegionId"],
                    "status": "Starting",
                    # RunInstances with InternetMaxBandwidthOut > 0: a public IPv4.
                    "ip": "198.51.100.30" if int(p.get("InternetMaxBandwidthOut") or 0) else "",
                }
                self.instances[inst["id"]] = inst
                return self._doc(
                    action,
                    f"<InstanceIdSets><InstanceIdSet>{inst['id']}</InstanceIdSet></InstanceIdSets>",
                )
            if action == "DescribeInstances":
                ids = json.loads(p["InstanceIds"]) if p.get("InstanceIds") else None
                found = [i for i in self.instances.values() if ids is None or i["id"] in ids]
                items = "".join(self._instance_xml(i) for i in found)
                return self._doc(
                    action,
                    f"<TotalCount>{len(found)}</TotalCount><PageNumber>1</PageNumber>"
                    f"<PageSize>10</PageSize><Instances>{items}</Instances>",
                )
            if action == "DeleteInstance":
                if self.instances.pop(p.get("InstanceId", ""), None) is None:
                    return self.error(
                        404,
                        "InvalidInstanceId.NotFound",
                        "The specified InstanceId does not exist.",
                    )
                return self._doc(action, "")
        return self.error(400, "InvalidAction.NotFound", f"{action} is not valid")


DOUBLES: dict[str, Callable[[], ProviderDouble]] = {
    "ec2": EC2Double,
    "vultr": VultrDouble,
    "linode": LinodeDouble,
    "aliyun_ecs": ECSDouble,
}
