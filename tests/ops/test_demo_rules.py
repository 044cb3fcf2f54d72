"""The offline demo's rules (app/devtools/demo.py): what `make run` starts of it, and when not.

Anything configured explicitly turns the matching part off; production and testing never
start any part; the banner names what runs and why a part does not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.devtools import demo
from app.devtools.demo import PRIVILEGE_PROBLEM, DemoPlan, plan_demo
from tests.ops.test_services import run

URLS = {"DATABASE_URL": "postgresql://pg/vibebox", "REDIS_URL": "redis://127.0.0.1:6379/0"}


def _never(*_: object) -> bool:
    raise AssertionError("sudo must not be probed here")


def test_development_with_nothing_configured_starts_the_local_happy_server_and_the_box() -> None:
    plan = plan_demo({}, euid=0, sudo_works=_never)
    assert plan == DemoPlan(happy_server=True, box=True, box_login="root")


def test_without_root_the_box_logs_in_as_the_current_user_when_sudo_needs_no_password() -> None:
    plan = plan_demo({"VIBEBOX_ENV": "development"}, euid=1000, user="ada", sudo_works=lambda: True)
    assert plan == DemoPlan(happy_server=True, box=True, box_login="ada")


def test_without_root_or_passwordless_sudo_there_is_no_box_and_the_banner_says_why() -> None:
    plan = plan_demo({}, euid=1000, user="ada", sudo_works=lambda: False)
    assert plan.happy_server and not plan.box
    assert plan.reasons == (PRIVILEGE_PROBLEM,)
    assert "sudo -n" in PRIVILEGE_PROBLEM and "vibebox pool add" in PRIVILEGE_PROBLEM


@pytest.mark.parametrize("mode", ["production", "testing", "PRODUCTION"])
def test_production_and_testing_never_start_any_demo_part(mode: str) -> None:
    plan = plan_demo({"VIBEBOX_ENV": mode}, euid=0, sudo_works=_never)
    assert plan == DemoPlan(happy_server=False, box=False)
    assert not plan.anything


def test_production_starts_no_process_even_when_asked_for_a_demo(tmp_path: Path) -> None:
    env = {"VIBEBOX_ENV": "production", "VIBEBOX_DEMO": "1", "VIBEBOX_VAR_DIR": str(tmp_path)}
    started, extra = demo.start_demo(env, tmp_path, plan_demo(env))
    assert started.lines == [] and extra == {}
    assert not (tmp_path / "demo").exists()  # nothing was even prepared


def test_a_configured_happy_server_turns_off_the_local_one_and_the_demo_box() -> None:
    plan = plan_demo({"HAPPY_SERVER_URL": "https://happy.example"}, euid=0, sudo_works=_never)
    assert not plan.happy_server and not plan.box
    assert "HAPPY_SERVER_URL is set" in plan.reasons[0]


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "OFF"])
def test_vibebox_demo_0_turns_the_whole_demo_off(value: str) -> None:
    plan = plan_demo({"VIBEBOX_DEMO": value}, euid=0, sudo_works=_never)
    assert not plan.anything
    assert plan.reasons == ("demo off (VIBEBOX_DEMO=0)",)


def test_switched_off_demo_is_named_in_the_banner_and_starts_nothing(tmp_path: Path) -> None:
    env = {"VIBEBOX_DEMO": "0", "VIBEBOX_VAR_DIR": str(tmp_path)}
    started, extra = demo.start_demo(env, tmp_path, plan_demo(env))
    assert extra == {}
    text = run.banner({**env, **URLS}, started.lines)
    assert "demo off (VIBEBOX_DEMO=0)" in text
    assert "Happy server" not in text and "Demo box" not in text


def test_banner_lists_the_demo_parts_and_the_dev_payments() -> None:
    lines = ["Happy server (local dev double) http://127.0.0.1:8765", "Demo box ssh 127.0.0.1:2222"]
    text = run.banner(URLS, lines)
    assert "Payments: dev provider (pay on the dev checkout page)" in text
    assert "  Happy server (local dev double) http://127.0.0.1:8765" in text
    assert "  Demo box ssh 127.0.0.1:2222" in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "dev provider (pay on the dev checkout page)"),
        ({"PAYMENT_PROVIDERS": "stripe"}, "stripe"),
        ({"PAYMENT_PROVIDERS": "stripe,dev"}, "stripe, dev (dev: pay on the dev checkout page)"),
        ({"VIBEBOX_ENV": "production"}, "none enabled (set PAYMENT_PROVIDERS)"),
    ],
)
def test_banner_payments_line_follows_the_configuration(env: dict[str, str], expected: str) -> None:
    assert f"  Payments: {expected}\n" in run.banner({**env, **URLS})


def _settings_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("PAYMENT_PROVIDERS", "SECRET_KEY", "JWT_SECRET_KEY", "ENCRYPTION_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_dev_payments_are_on_by_default_in_development_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.config import Settings

    _settings_env(monkeypatch, VIBEBOX_ENV="development")
    assert Settings.from_env().payment_providers == ("dev",)
    _settings_env(monkeypatch, VIBEBOX_ENV="testing")
    assert Settings.from_env().payment_providers == ()


def test_configured_payment_providers_are_respected_in_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.config import Settings

    _settings_env(monkeypatch, VIBEBOX_ENV="development", PAYMENT_PROVIDERS="stripe")
    assert Settings.from_env().payment_providers == ("stripe",)


def test_demo_files_live_under_the_var_dir(tmp_path: Path) -> None:
    assert demo.demo_dir({"VIBEBOX_VAR_DIR": str(tmp_path)}, Path("/repo")) == tmp_path / "demo"
    assert demo.demo_dir({}, Path("/repo")) == Path("/repo/var/demo")


def test_a_taken_demo_ssh_port_is_refused_with_the_variable_to_change(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        box = demo.Demo(tmp_path / "demo")
        with pytest.raises(demo.DemoError, match="VIBEBOX_DEMO_SSH_PORT"):
            box.start_box({"VIBEBOX_DEMO_SSH_PORT": str(port)}, "root", "http://127.0.0.1:1")
    assert os.listdir(tmp_path) == []  # refused before anything was written


def test_the_local_happy_server_keeps_its_accounts_across_a_restart(tmp_path: Path) -> None:
    from app.devtools.happy_server import HappyDouble, make_secret
    from app.integrations.happy import HappyClient

    state = tmp_path / "happy-state.json"
    with HappyDouble() as first:
        token = HappyClient(first.url).create_account(make_secret())
        account = HappyClient(first.url).get_profile(token)
        first.save_state(state)
    assert state.stat().st_mode & 0o777 == 0o600  # tokens are credentials
    second = HappyDouble()
    second.load_state(state)
    with second:
        assert HappyClient(second.url).get_profile(token) == account
