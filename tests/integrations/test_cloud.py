"""app.integrations.cloud through the REAL libcloud DigitalOcean driver against the DO double
(droplets are real sshd machines), and the other drivers' mapping against doubled answers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
from libcloud.common.types import InvalidCredsError
from libcloud.compute.base import Node
from libcloud.compute.types import NodeState

from app.errors import PermanentError, TransientError
from app.integrations import cloud, ssh
from app.integrations.cloud import CloudAccount, CloudRateLimitedError, LibcloudCompute
from app.services.capacity.cloud_providers import generate_key_pair
from tests.support.do_double import DigitalOceanDouble


@pytest.fixture
def do(do_double: DigitalOceanDouble) -> Iterator[DigitalOceanDouble]:
    do_double.reset_faults()
    yield do_double
    do_double.reset_faults()
    compute = _compute(do_double)
    for droplet in do_double.live_droplets():
        compute.destroy_node(str(droplet.id))


def _compute(double: DigitalOceanDouble, token: str | None = None) -> LibcloudCompute:
    account = CloudAccount(
        driver="digitalocean",
        credentials={"key": token or double.token},
        region="nyc1",
        api_base_url=double.url,
        timeout=5,
    )
    return LibcloudCompute(account)


def test_create_is_idempotent_by_the_server_tag(do):
    compute = _compute(do)
    seen = len(do.requests)  # the double is shared by the session's tests
    first = compute.create_node(
        name="vibebox-s1",
        size="s-1vcpu-2gb",
        image="ubuntu-24-04-x64",
        ssh_key_id=None,
        tags=cloud.tags_for("s1"),
    )
    again = compute.create_node(
        name="vibebox-s1",
        size="s-1vcpu-2gb",
        image="ubuntu-24-04-x64",
        ssh_key_id=None,
        tags=cloud.tags_for("s1"),
    )
    assert again.id == first.id and first.server_id == "s1"
    assert [n.id for n in compute.list_nodes(tag=cloud.server_tag("s1"))] == [first.id]
    creates = [r for r in do.requests[seen:] if r[0] == "POST" and r[1].startswith("/v2/droplets")]
    assert len(creates) == 1


def test_list_follows_pagination_links(do):
    compute = _compute(do)
    seen = len(do.requests)
    compute.driver.ex_per_page = 2
    for i in range(5):
        do.add_foreign_droplet(f"vibebox-p{i}", [cloud.TAG, cloud.server_tag(f"p{i}")])
    do.add_foreign_droplet("someone-elses", ["web"])
    tagged = compute.list_nodes(tag=cloud.TAG)
    assert sorted(n.server_id for n in tagged) == [f"p{i}" for i in range(5)]
    assert any("tag_name=vibebox" in path and "page=3" in path for _m, path in do.requests[seen:])
    everything = compute.list_nodes()  # libcloud's own pagination (links.pages.last)
    assert len(everything) == len(do.live_droplets()) >= 6


def test_rate_limit_maps_to_a_retry_hint_from_ratelimit_reset(do):
    do.rate_limit_next(1, reset_in=3)
    with pytest.raises(CloudRateLimitedError) as caught:
        _compute(do).list_nodes(tag=cloud.TAG)
    assert 1.0 <= caught.value.retry_after <= 3.5
    assert "slow down" in caught.value.safe_message
    assert _compute(do).list_nodes(tag=cloud.TAG) == []  # next call goes through


def test_server_errors_are_transient_and_refusals_permanent(do):
    do.fail_next(1, 503, "/v2/droplets")
    with pytest.raises(TransientError) as caught:
        _compute(do).list_nodes(tag=cloud.TAG)
    assert not isinstance(caught.value, PermanentError) and do.token not in str(caught.value)
    with pytest.raises(PermanentError, match="credentials"):
        _compute(do, token="wrong").list_nodes()
    with pytest.raises(PermanentError) as refused:
        _compute(do).create_node(
            name="vibebox-bad",
            size="no-such-size",
            image="ubuntu-24-04-x64",
            ssh_key_id=None,
            tags=cloud.tags_for("bad"),
        )
    assert "refused" in refused.value.safe_message


def test_droplet_limit_is_a_permanent_quota_error(do):
    do.droplet_limit = 0
    try:
        with pytest.raises(PermanentError) as caught:
            _compute(do).create_node(
                name="vibebox-q",
                size="s-1vcpu-2gb",
                image="ubuntu-24-04-x64",
                ssh_key_id=None,
                tags=cloud.tags_for("q"),
            )
    finally:
        do.droplet_limit = 25
    assert "quota" in caught.value.safe_message


def test_a_droplet_boots_into_a_real_ssh_machine_with_our_key(do):
    compute = _compute(do)
    private, public = generate_key_pair("vibebox-test")
    key_id = compute.register_key("vibebox-test", public)
    assert compute.register_key("vibebox-test", public) == key_id  # found, not added twice
    node = compute.create_node(
        name="vibebox-m1",
        size="s-1vcpu-2gb",
        image="ubuntu-24-04-x64",
        ssh_key_id=key_id,
        tags=cloud.tags_for("m1"),
    )
    deadline = time.monotonic() + 20
    while not (node := compute.get_node(node.id) or node).public_ips:
        assert time.monotonic() < deadline, "the droplet never got an address"
        time.sleep(0.2)
    address = node.public_ips[0]
    assert address.startswith("127.") and address != "127.0.0.1"
    fingerprint = ssh.fetch_host_key_fingerprint(address, do.ssh_port, timeout=5)
    target = ssh.SSHTarget(
        host=address,
        port=do.ssh_port,
        user=do.login_user,
        private_key=private,
        host_key_fingerprint=fingerprint,
    )
    with ssh.BoxSession(target, connect_timeout=5, command_timeout=10) as box:
        assert box.run("sudo -n true && command -v happy").exit_status == 0
    compute.destroy_node(node.id)
    compute.destroy_node(node.id)  # already gone: still fine
    assert compute.get_node(node.id) is None


# --- the other drivers: built by libcloud, answers doubled ----------------------------------


@pytest.mark.parametrize("driver", ["ec2", "vultr", "linode", "aliyun_ecs", "digitalocean"])
def test_every_driver_is_constructed_without_network(driver):
    account = CloudAccount(
        driver=driver,
        credentials={"key": "AKIAEXAMPLE", "secret": "s"},
        region="us-east-1",
        api_base_url="http://127.0.0.1:9",
    )
    compute = LibcloudCompute(account)
    assert compute.expected_boot_seconds == cloud.EXPECTED_BOOT_SECONDS[driver]
    assert compute.driver.connection.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("tags", "name"),
    [
        ({"vibebox": "1", "vibebox-server-abc": "1", "Name": "vibebox-abc"}, "vibebox-abc"),  # EC2
        (["vibebox", "vibebox-server-abc"], "vibebox-abc"),  # Linode, DigitalOcean
        ("vibebox-server-abc", "vibebox-abc"),  # Vultr: one tag
        (None, "vibebox-abc"),  # Alibaba ECS without tags: the name says it
    ],
)
def test_nodes_of_every_driver_map_to_our_server_id(tags, name):
    account = CloudAccount(
        driver="ec2", credentials={"key": "k", "secret": "s"}, region="us-east-1"
    )
    compute = LibcloudCompute(account)
    extra = {"tags": tags} if tags is not None else {}
    node = Node("i-1", name, NodeState.RUNNING, ["203.0.113.7"], [], compute.driver, extra=extra)
    mapped = cloud._to_node(node)
    assert (mapped.server_id, mapped.public_ips, mapped.state) == (
        "abc",
        ("203.0.113.7",),
        "running",
    )
    assert cloud._has_tag(mapped, cloud.TAG) and cloud._has_tag(mapped, "vibebox-server-abc")


def test_libcloud_errors_map_to_ours():
    limited = RateLimitReachedError(headers={"retry-after": "7"})
    assert isinstance(cloud.translate(limited, "x"), CloudRateLimitedError)
    assert cloud.translate(limited, "x").retry_after == 7  # type: ignore[attr-defined]
    assert type(cloud.translate(BaseHTTPError(502, "bad gateway"), "x")) is TransientError
    quota = cloud.translate(BaseHTTPError(403, "InstanceLimitExceeded: quota"), "x")
    assert isinstance(quota, PermanentError) and "quota" in quota.safe_message
    assert isinstance(cloud.translate(InvalidCredsError("no"), "x"), PermanentError)
    assert type(cloud.translate(ConnectionResetError("reset"), "x")) is TransientError
