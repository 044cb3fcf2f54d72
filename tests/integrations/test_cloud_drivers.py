"""EC2, Vultr, Linode and Alibaba ECS through app.integrations.cloud and libcloud's REAL
drivers, against small protocol-faithful API doubles on loopback (tests/support/
provider_doubles.py): what each driver sends for our key, node name, tags, cloud-init user
data (and Linode's root password), how their answers map back, and how their errors map to
transient or permanent. Fast tier: no worker, no sshd."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from libcloud.common.types import LibcloudError, MalformedResponseError

from app.errors import PermanentError, TransientError
from app.integrations import cloud
from app.integrations.bootstrap import cloud_init_login_user_data
from app.integrations.cloud import CloudAccount, CloudRateLimitedError, LibcloudCompute
from app.services.capacity.cloud_providers import generate_key_pair
from tests.support.provider_doubles import (
    DOUBLES,
    EC2Double,
    ECSDouble,
    LinodeDouble,
    ProviderDouble,
    Reply,
    VultrDouble,
)

REGIONS = {"ec2": "us-east-1", "vultr": "ewr", "linode": "us-east", "aliyun_ecs": "cn-hangzhou"}
SIZES = {"ec2": "t3.small", "vultr": "vc2-1c-2gb", "linode": "g6-standard-1"}
SIZES["aliyun_ecs"] = "ecs.t6-c1m1.large"
IMAGES = {"ec2": "ami-0abcdef1234567890", "vultr": "2284", "linode": "linode/ubuntu24.04"}
IMAGES["aliyun_ecs"] = "ubuntu_24_04_x64_20G_alibase_20240812.vhd"
BAD_SIZES = {"ec2": "no.such", "vultr": "no-such-plan", "linode": "no-such-type"}
BAD_SIZES["aliyun_ecs"] = "ecs.no-such"
PUBLIC_KEY = generate_key_pair("vibebox-test")[1]


def _error(driver: str, status: int, what: str) -> Reply:
    """An error answer in the driver's own shape."""
    if driver == "vultr":
        return VultrDouble.error(status, what)
    if driver == "linode":
        return LinodeDouble.error(status, what)
    if driver == "ec2":
        return EC2Double.error(status, "RequestLimitExceeded" if status != 400 else "Bad", what)
    return ECSDouble.error(status, "Throttling" if status != 400 else "InvalidParameter", what)


@pytest.fixture(params=sorted(DOUBLES))
def provider(request: pytest.FixtureRequest) -> Iterator[tuple[str, ProviderDouble]]:
    with DOUBLES[request.param]() as double:
        yield request.param, double


def _compute(driver: str, double: ProviderDouble, **extra: str) -> LibcloudCompute:
    credentials = {"key": "AKIDEXAMPLE", "secret": "wJalrXUtnFEMI/K7MDENG", **extra}
    if driver == "linode":
        credentials["publicKey"] = PUBLIC_KEY  # as cloud_providers.account_of adds it
    if driver == "aliyun_ecs":
        credentials.setdefault("securityGroupId", "sg-bp1example")
    account = CloudAccount(
        driver=driver,
        credentials=credentials,
        region=REGIONS[driver],
        api_base_url=double.url,
        timeout=5,
    )
    return LibcloudCompute(account)


def _create(compute: LibcloudCompute, server: str, key_id: str | None, **kw: Any) -> Any:
    driver = compute.account.driver
    return compute.create_node(
        name=cloud.node_name(server),
        size=kw.pop("size", SIZES[driver]),
        image=IMAGES[driver],
        ssh_key_id=key_id,
        tags=cloud.tags_for(server),
        **kw,
    )


def _sent_create(driver: str, double: ProviderDouble) -> dict[str, Any]:
    """The create request the driver sent, normalised: name, tags, key, user data."""
    if driver == "vultr":
        (req,) = double.sent("POST", "/v2/instances")
        body = req.json
        return {
            "name": body["label"],
            "tags": [body["tag"]],
            "key": body.get("sshkey_id"),
            "user_data": base64.b64decode(body["user_data"]).decode(),
            "raw": body,
        }
    if driver == "linode":
        (req,) = double.sent("POST", "/v4/linode/instances")
        body = req.json
        return {
            "name": body["label"],
            "tags": body["tags"],
            "key": body["authorized_keys"],
            "user_data": base64.b64decode(body["metadata"]["user_data"]).decode(),
            "raw": body,
        }
    (req,) = [r for r in double.requests if r.params.get("Action") == "RunInstances"]
    p = req.params
    if driver == "ec2":
        tags = [v for k, v in p.items() if k.startswith("TagSpecification.1.Tag.") and "Key" in k]
        return {
            "name": p["TagSpecification.1.Tag.1.Value"],  # Name, libcloud's first tag
            "tags": tags,
            "key": p.get("KeyName"),
            "user_data": base64.b64decode(p["UserData"]).decode(),
            "raw": p,
        }
    tags = [v for k, v in p.items() if k.startswith("Tag.") and k.endswith(".Key")]
    return {
        "name": p["InstanceName"],
        "tags": tags,
        "key": None,  # ECS: in the user data
        "user_data": base64.b64decode(p["UserData"]).decode(),
        "raw": p,
    }


# --- the whole interface per driver ---------------------------------------------------------


def test_register_create_list_destroy_through_the_real_driver(provider):
    driver, double = provider
    compute = _compute(driver, double)
    key_id = compute.register_key("vibebox-prov", PUBLIC_KEY)
    assert compute.register_key("vibebox-prov", PUBLIC_KEY) == key_id  # found, not added twice
    expected_key: Any
    if driver == "ec2":
        assert key_id == "vibebox-prov"  # the key pair NAME (KeyName), not its fingerprint
        assert list(double.key_pairs) == ["vibebox-prov"]  # type: ignore[attr-defined]
        expected_key = "vibebox-prov"
    elif driver == "vultr":
        assert key_id == double.keys[0]["id"] and len(double.keys) == 1  # type: ignore[attr-defined]
        expected_key = [key_id]
    elif driver == "linode":
        assert key_id == "vibebox-prov" and double.requests == []  # no key API: create takes it
        expected_key = [PUBLIC_KEY]
    else:
        assert key_id == "vibebox-prov" and double.requests == []  # no key pairs in libcloud
        expected_key = None

    user_data = cloud_init_login_user_data(login_user="vibebox", authorized_keys=[PUBLIC_KEY])
    node = _create(compute, "s1", key_id, user_data=user_data)
    assert node.server_id == "s1" and node.id

    sent = _sent_create(driver, double)
    assert sent["name"] == "vibebox-s1"
    assert cloud.server_tag("s1") in sent["tags"]
    assert sent["key"] == expected_key
    assert sent["user_data"] == user_data and PUBLIC_KEY in sent["user_data"]

    again = _create(compute, "s1", key_id, user_data=user_data)  # found by its tag
    assert again.id == node.id
    _sent_create(driver, double)  # still exactly one create request

    _create(compute, "s2", key_id)
    mine = compute.list_nodes(tag=cloud.server_tag("s1"))
    assert [n.id for n in mine] == [node.id] and mine[0].server_id == "s1"
    assert sorted(n.server_id or "" for n in compute.list_nodes(tag=cloud.TAG)) == ["s1", "s2"]
    assert compute.get_node(node.id) is not None

    compute.destroy_node(node.id)
    compute.destroy_node(node.id)  # already gone: still fine
    assert compute.get_node(node.id) is None
    assert [n.server_id for n in compute.list_nodes(tag=cloud.TAG)] == ["s2"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [(400, PermanentError), (429, CloudRateLimitedError), (503, TransientError)],
)
def test_http_errors_map_to_permanent_or_transient(provider, status, expected):
    driver, double = provider
    compute = _compute(driver, double)
    double.fail_next(_error(driver, status, "refused by the double"))
    with pytest.raises(TransientError if expected is not PermanentError else PermanentError) as e:
        compute.list_nodes(tag=cloud.TAG)
    assert type(e.value) is expected
    assert "wJalrXUtnFEMI" not in str(e.value) and "AKIDEXAMPLE" not in str(e.value)
    assert compute.list_nodes(tag=cloud.TAG) == []  # the next call goes through


def test_a_refused_create_is_permanent(provider):
    driver, double = provider
    compute = _compute(driver, double)
    with pytest.raises(PermanentError) as refused:
        _create(compute, "bad", "vibebox-prov", size=BAD_SIZES[driver])
    assert "refused" in refused.value.safe_message or "rejected" in refused.value.safe_message


def test_rate_limit_keeps_the_retry_after_hint():
    with EC2Double() as double:
        compute = _compute("ec2", double)
        limited = _error("ec2", 429, "slow down")
        double.fail_next(Reply(429, limited.body, limited.content_type, {"Retry-After": "7"}))
        with pytest.raises(CloudRateLimitedError) as caught:
            compute.list_nodes()
        assert caught.value.retry_after == 7


# --- per-driver specifics -------------------------------------------------------------------


def test_linode_gets_a_fresh_strong_root_password_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    with LinodeDouble() as double:
        compute = _compute("linode", double)
        _create(compute, "l1", "vibebox-prov")
        _create(compute, "l2", "vibebox-prov")
    first, second = (r.json["root_pass"] for r in double.sent("POST", "/v4/linode/instances"))
    assert first != second and len(first) >= 32
    assert any(c.isupper() for c in first) and any(c.isdigit() for c in first)
    assert any(not c.isalnum() for c in first)
    assert first not in caplog.text and second not in caplog.text


def test_linode_without_user_data_sends_no_metadata():
    with LinodeDouble() as double:
        _create(_compute("linode", double), "l3", "vibebox-prov")
    (req,) = double.sent("POST", "/v4/linode/instances")
    assert "metadata" not in req.json and req.json["authorized_keys"] == [PUBLIC_KEY]


def test_ecs_gets_a_public_address_and_the_provider_extras():
    with ECSDouble() as double:
        compute = _compute("aliyun_ecs", double)
        node = _create(compute, "e1", "vibebox-prov", user_data="#cloud-config\n")
        p = _sent_create("aliyun_ecs", double)["raw"]
        assert p["InternetMaxBandwidthOut"] == str(cloud.ECS_BANDWIDTH_OUT_MBPS)
        assert p["InternetChargeType"] == "PayByTraffic" and p["SecurityGroupId"] == "sg-bp1example"
        assert p["ClientToken"] == "vibebox-e1" and "VSwitchId" not in p
        assert node.public_ips == ("198.51.100.30",)
    with ECSDouble() as double:
        compute = _compute(
            "aliyun_ecs",
            double,
            vSwitchId="vsw-bp1example",
            internetMaxBandwidthOut="20",
            systemDiskCategory="cloud_essd",
        )
        _create(compute, "e2", "vibebox-prov")
        (req,) = [r for r in double.requests if r.params.get("Action") == "RunInstances"]
        assert req.params["VSwitchId"] == "vsw-bp1example"
        assert req.params["InternetMaxBandwidthOut"] == "20"
        assert req.params["SystemDisk.Category"] == "cloud_essd"
        assert "UserData" not in req.params


def test_ecs_without_a_security_group_stops_at_once():
    with ECSDouble() as double:
        compute = _compute("aliyun_ecs", double, securityGroupId="")
        with pytest.raises(PermanentError) as caught:
            _create(compute, "e3", "vibebox-prov")
    assert "securityGroupId" in caught.value.safe_message
    assert not [r for r in double.requests if r.params.get("Action") == "RunInstances"]


def test_vultr_reports_no_address_until_assigned():
    with VultrDouble() as double:
        node = _create(_compute("vultr", double), "v1", None)
    assert node.public_ips == ()  # Vultr says 0.0.0.0 while pending
    (req,) = double.sent("POST", "/v2/instances")
    assert "sshkey_id" not in req.json and "user_data" not in req.json


# --- errors raised without an HTTP answer ---------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        LibcloudError("ex_security_group_id is mandatory"),
        NotImplementedError("import_key_pair_from_string"),
        TypeError("create_node() got an unexpected keyword argument 'ex_keyname'"),
        AttributeError("ex_security_group_id is mandatory"),
    ],
)
def test_misconfiguration_is_permanent_and_says_what(exc):
    mapped = cloud.translate(exc, "create node")
    assert type(mapped) is PermanentError
    assert "settings" in mapped.safe_message and str(exc.args[0])[:20] in str(mapped)


def test_status_inside_a_libcloud_error_still_decides():
    linode_busy = LibcloudError("Too many requests Status code: 429.")
    assert isinstance(cloud.translate(linode_busy, "x"), CloudRateLimitedError)
    linode_down = LibcloudError("Server error Status code: 503.")
    assert type(cloud.translate(linode_down, "x")) is TransientError
    garbled = MalformedResponseError("Failed to parse XML", body="<html>")
    assert type(cloud.translate(garbled, "x")) is TransientError
