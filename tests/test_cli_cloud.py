"""`vibebox cloud ...` against real PostgreSQL: one command adds a DigitalOcean provider."""

from __future__ import annotations

from sqlalchemy import select

from app.models import CloudProvider
from app.services.capacity import cloud_providers

TOKEN = "dop_v1_" + "cd34" * 16


def run(app, *args: str, env: dict[str, str] | None = None):
    return app.test_cli_runner().invoke(args=["cloud", *args], env=env)


def test_add_list_update_remove(app, db, session, settings):
    added = run(
        app,
        "add",
        "--name",
        "do-fra",
        "--region",
        "fra1",
        "--box-region",
        "intl",
        "--image",
        "ubuntu-24-04-x64",
        "--size",
        "basic=s-2vcpu-4gb",
        "--size-rule",
        "s-4vcpu-8gb:4:8:160",
        "--price",
        "s-2vcpu-4gb=2400",
        "--warm-target",
        "2",
        "--max-servers",
        "5",
        "--monthly-budget-cents",
        "20000",
        "--api-base-url",
        "http://127.0.0.1:9/",
        "--token-env",
        "DO_TOKEN",
        env={"DO_TOKEN": TOKEN},
    )
    assert added.exit_code == 0, added.output
    assert "added cloud provider do-fra" in added.output and TOKEN not in added.output
    provider = session.scalars(select(CloudProvider)).one()
    assert provider.driver == "digitalocean" and provider.plan_sizes == {"basic": "s-2vcpu-4gb"}
    assert (provider.region, provider.box_region) == ("fra1", "intl")
    assert provider.size_rules == [{"size": "s-4vcpu-8gb", "cpu": 4, "ramGb": 8, "diskGb": 160}]
    assert cloud_providers.credentials_of(provider, settings.encryption_key) == {"key": TOKEN}

    listed = run(app, "list")
    assert listed.exit_code == 0 and "do-fra" in listed.output and TOKEN not in listed.output

    updated = run(app, "update", "do-fra", "--disable", "--warm-target", "0", "--box-region", "")
    assert updated.exit_code == 0, updated.output
    session.refresh(provider)
    assert (provider.enabled, provider.warm_target, provider.box_region) == (False, 0, None)

    removed = run(app, "remove", "do-fra")
    assert removed.exit_code == 0, removed.output
    assert session.scalars(select(CloudProvider)).first() is None


def test_add_without_the_token_variable_fails_cleanly(app, db):
    result = run(
        app,
        "add",
        "--name",
        "x",
        "--region",
        "nyc1",
        "--image",
        "u",
        "--size",
        "basic=s",
        "--token-env",
        "NOPE_UNSET",
    )
    assert result.exit_code != 0 and "NOPE_UNSET is not set" in result.output
