"""BoxHost against real sshd boxes: the pool login (a passwordless sudoer) creates one Unix
user per box, runs the `happy` stand-in as that user and removes every trace of it.

What happened on the machine is checked from outside, as root, not through the code under
test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from app.integrations.box_host import (
    BoxEnvironmentError,
    BoxHost,
    BoxUser,
    DaemonEvidence,
    box_gecos,
    classify,
    describe,
    redact,
)
from app.integrations.happy import HappyClient, HappyCredentials, HappyMachine
from app.integrations.ssh import BoxSession
from tests.support.happy_double import HappyDouble, make_secret
from tests.support.sshd import (
    SUDOERS_DIR,
    BoxAccount,
    BoxFleet,
    SSHBox,
    _account_command,
    remove_product_box_users,
)
from tests.support.waiting import wait_until

STANDARD_PADDED_BASE64 = re.compile(
    r"^([0-9a-zA-Z+/]{4})*(([0-9a-zA-Z+/]{2}==)|([0-9a-zA-Z+/]{3}=))?$"
)
SERVER_ID = str(uuid.uuid4())


def _machine_with_status(
    client: HappyClient, creds: HappyCredentials, machine_id: str, status: str
) -> Callable[[], HappyMachine | None]:
    def check() -> HappyMachine | None:
        for machine in client.list_machines(creds.token, creds.secret):
            if machine.id == machine_id and machine.daemon_status == status:
                return machine
        return None

    return check


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def user_name() -> Iterator[str]:
    """A box user name in this test process's namespace (removed afterwards)."""
    prefix = os.environ["BOX_USER_PREFIX"]
    name = prefix + secrets.token_hex(6)
    yield name
    remove_product_box_users(name)


@pytest.fixture
def host(box: SSHBox, happy_double: HappyDouble) -> Iterator[BoxHost]:
    with BoxSession(box.target(), command_timeout=60) as session:
        yield BoxHost(session, default_happy_server_url=happy_double.url)


def _account(name: str) -> BoxAccount:
    box_id = _box_id_of(name)
    account = BoxAccount.of_box(box_id)
    assert account is not None
    return account


def _box_id_of(name: str) -> str:
    return f"test-{name}"


def _make_user(host: BoxHost, name: str) -> BoxUser:
    uid = host.ensure_user(BoxUser(name), box_gecos(_box_id_of(name), SERVER_ID))
    return BoxUser(name, uid)


# --- the operator channel ------------------------------------------------------------------


def test_a_sudoer_login_with_happy_can_host_boxes(host: BoxHost, box: SSHBox) -> None:
    check = host.check_operator()
    assert check.root and check.happy_path and check.happy_path.endswith("/happy")
    assert check.problem() is None
    assert re.fullmatch(r"[0-9a-f]{64}", check.authorized_keys_digest)


def test_a_login_without_sudo_is_refused_before_any_user_is_made(
    box: SSHBox, happy_double: HappyDouble, user_name: str
) -> None:
    (SUDOERS_DIR / box.user).unlink()
    with BoxSession(box.target()) as session:
        host = BoxHost(session, default_happy_server_url=happy_double.url)
        assert host.check_operator().problem() == (
            "the login is neither root nor allowed passwordless sudo (sudo -n)"
        )
        with pytest.raises(BoxEnvironmentError) as caught:
            host.ensure_user(BoxUser(user_name), box_gecos("x", SERVER_ID))
    assert "sudo" in caught.value.safe_message
    assert BoxAccount.of_box("x") is None


# --- the box user -----------------------------------------------------------------------------


def test_ensure_user_makes_a_private_unprivileged_user_and_is_idempotent(
    host: BoxHost, user_name: str
) -> None:
    user = _make_user(host, user_name)
    again = host.ensure_user(BoxUser(user_name), box_gecos(_box_id_of(user_name), SERVER_ID))

    account = _account(user_name)
    assert again == user.uid == account.uid and account.uid != 0
    assert stat.S_IMODE(account.home.stat().st_mode) == 0o700
    assert account.happy_dir.stat().st_uid == account.uid
    assert account.run("sudo -n true").returncode != 0


def test_ensure_user_refuses_a_user_of_that_name_that_is_not_this_boxs(
    host: BoxHost, user_name: str
) -> None:
    host.ensure_user(BoxUser(user_name), box_gecos("another-box", SERVER_ID))
    with pytest.raises(BoxEnvironmentError):
        host.ensure_user(BoxUser(user_name), box_gecos("this-box", SERVER_ID))


def test_write_credentials_as_the_box_user_over_stdin_only(
    host: BoxHost, user_name: str, credentials: HappyCredentials
) -> None:
    user = _make_user(host, user_name)
    host.write_credentials(user, credentials)
    host.write_credentials(user, credentials)  # idempotent

    account = _account(user_name)
    assert stat.S_IMODE(account.happy_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(account.access_key_path.stat().st_mode) == 0o600
    assert account.access_key_path.stat().st_uid == account.uid
    content = json.loads(account.access_key_path.read_text())
    assert STANDARD_PADDED_BASE64.match(content["secret"])
    assert "+" in content["secret"] and "/" in content["secret"]
    assert base64.b64decode(content["secret"]) == credentials.secret
    assert content["token"] == credentials.token
    assert sorted(p.name for p in account.happy_dir.iterdir()) == ["access.key"]
    commands = "\n".join(host.session.commands)
    for secret in (credentials.secret_b64, credentials.token, credentials.secret.hex()):
        assert secret not in commands


def test_daemon_runs_as_the_box_user_registers_and_survives_the_ssh_session(
    box: SSHBox, happy_double: HappyDouble, user_name: str, credentials: HappyCredentials
) -> None:
    client = HappyClient(happy_double.url)
    with BoxSession(box.target()) as session:
        host = BoxHost(session, default_happy_server_url=happy_double.url)
        user = _make_user(host, user_name)
        assert host.liveness(user).alive is False
        host.write_credentials(user, credentials)
        assert host.start_daemon(user, timeout=30).exit_status == 0
        machine_id = host.read_machine_id(user)
        assert machine_id
    with BoxSession(box.target()) as session:
        host = BoxHost(session, default_happy_server_url=happy_double.url)
        live = host.liveness(user)
        assert live.alive and live.pid is not None
        assert Path(f"/proc/{live.pid}").stat().st_uid == user.uid
        wait_until(_machine_with_status(client, credentials, machine_id, "running"))
        # A crash: the server keeps "running", the box says dead.
        os.kill(live.pid, 9)
        wait_until(lambda: not _pid_alive(live.pid))
        assert host.liveness(user) == type(live)(False, live.pid)
        assert _machine_with_status(client, credentials, machine_id, "running")() is not None


def test_end_all_processes_ends_sessions_and_everything_the_user_started(
    host: BoxHost, user_name: str, credentials: HappyCredentials
) -> None:
    user = _make_user(host, user_name)
    host.write_credentials(user, credentials)
    assert host.start_daemon(user, timeout=30).exit_status == 0
    account = _account(user_name)
    for command in (
        "setsid sleep 4101 </dev/null >/dev/null 2>&1 &",
        "nohup sleep 4102 </dev/null >/dev/null 2>&1 &",
        "sh -c 'sleep 4103 </dev/null >/dev/null 2>&1 &' &",
    ):
        assert account.run(command).returncode == 0
    assert len(account.pids()) >= 4

    ended = host.end_all_processes(user)

    assert ended >= 3 and account.pids() == []  # the daemon itself stopped gracefully
    assert account.access_key_path.exists()  # files stay: this is a power-off
    assert host.end_all_processes(user) == 0  # nothing left: idempotent


def test_remove_user_leaves_nothing_of_the_uid_and_box_users_are_per_server(
    host: BoxHost, user_name: str, credentials: HappyCredentials
) -> None:
    user = _make_user(host, user_name)
    other_server = BoxUser(user_name[:-2] + "zz")
    other_uid = host.ensure_user(other_server, box_gecos("other", str(uuid.uuid4())))
    try:
        host.write_credentials(user, credentials)
        host.start_daemon(user, timeout=30)
        account = _account(user_name)
        for command in (
            "setsid sleep 4201 </dev/null >/dev/null 2>&1 &",
            "echo '* * * * * true' | crontab -",
            "echo x > /tmp/vbt-left-$USER && echo y > /dev/shm/vbt-left-$USER",
        ):
            assert account.run(command).returncode == 0
        assert [u.name for u in host.box_users(SERVER_ID)] == [user_name]
        assert host.leftovers(BoxUser(user_name, user.uid)) is not None

        host.remove_user(user)
        host.remove_user(user)  # idempotent

        assert host.leftovers(user) is None
        assert not account.exists() and account.pids() == []
        assert not Path(f"/tmp/vbt-left-{user_name}").exists()
        assert not Path(f"/dev/shm/vbt-left-{user_name}").exists()
        assert not Path(f"/var/spool/cron/crontabs/{user_name}").exists()
        assert host.box_users(SERVER_ID) == []
        # Another server's box user on the same host is not touched.
        assert BoxAccount.of_box("other") is not None and other_uid > 0
    finally:
        remove_product_box_users(other_server.name)


def test_a_repeated_teardown_leaves_alone_a_new_user_that_got_the_old_uid(
    host: BoxHost, user_name: str
) -> None:
    """useradd hands a freed uid out again: a retried teardown of a box whose user is gone
    must not kill the processes nor delete the files of whoever holds that uid now."""
    user = _make_user(host, user_name)
    host.remove_user(user)
    assert user.uid is not None
    newcomer = user_name[:-2] + "nn"
    # The next box's user, created as useradd may well do it: with the uid just freed. (-o:
    # another test process may have been handed that uid already; passwd's lock is retried.)
    _account_command(
        ["useradd", "-o", "-M", "-u", str(user.uid), "-c", "vibebox-box newcomer", newcomer]
    )
    as_newcomer = ["setpriv", f"--reuid={user.uid}", f"--regid={user.uid}", "--clear-groups"]
    sleeper = subprocess.Popen([*as_newcomer, "sleep", "4203"])
    try:
        marker = Path(f"/tmp/vbt-newcomer-{newcomer}")
        marker.write_text("mine")
        os.chown(marker, user.uid, user.uid)

        host.remove_user(user)  # the retry, with the uid remembered from before

        assert sleeper.poll() is None, "the newcomer's process was killed"
        assert marker.exists(), "the newcomer's file was deleted"
        assert host.leftovers(user) is None
    finally:
        sleeper.kill()
        sleeper.wait()
        Path(f"/tmp/vbt-newcomer-{newcomer}").unlink(missing_ok=True)
        remove_product_box_users(newcomer)


def test_leftovers_notices_a_changed_login_authorized_keys(
    host: BoxHost, box: SSHBox, user_name: str
) -> None:
    user = _make_user(host, user_name)
    digest = host.login_keys_digest()
    host.remove_user(user)
    assert host.leftovers(user, login_keys_digest=digest) is None

    with open(box.home / ".ssh" / "authorized_keys", "a") as keys:
        keys.write("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA intruder\n")
    problem = host.leftovers(user, login_keys_digest=digest)
    assert problem is not None and "authorized_keys changed" in problem


# --- diagnosis ---------------------------------------------------------------------------------


def test_unreachable_happy_server_is_found_and_classified_as_the_environment(
    box_fleet: BoxFleet, happy_double: HappyDouble, user_name: str, credentials: HappyCredentials
) -> None:
    broken = box_fleet.new_box(happy_url="http://127.0.0.1:1")
    try:
        with BoxSession(broken.target()) as session:
            host = BoxHost(session, default_happy_server_url=happy_double.url)
            user = _make_user(host, user_name)
            host.write_credentials(user, credentials)
            result = host.start_daemon(user, timeout=30)
            assert result.exit_status == 1 and "Failed to start daemon" in result.output
            evidence = host.collect_evidence(user, credentials)
    finally:
        box_fleet.remove(broken)
    assert evidence.happy_on_path and evidence.key_file == "ok"
    assert evidence.happy_server_url == "http://127.0.0.1:1"
    assert evidence.reach.startswith("unreachable")
    assert any("ECONNREFUSED" in line for line in evidence.log_tail)
    assert classify(evidence) == "environment"
    assert "the daemon could not reach the Happy server at http://127.0.0.1:1" in describe(evidence)
    for line in evidence.log_tail:
        assert credentials.token not in line and credentials.secret_b64 not in line


def test_a_changed_key_file_is_found_and_classified_as_credentials(
    host: BoxHost, user_name: str, credentials: HappyCredentials
) -> None:
    user = _make_user(host, user_name)
    evidence = host.collect_evidence(user, credentials)
    assert evidence.key_file == "missing" and classify(evidence) == "credentials"
    host.write_credentials(user, HappyCredentials(make_secret(), "another-token"))
    evidence = host.collect_evidence(user, credentials)
    assert evidence.key_file == "different" and classify(evidence) == "credentials"
    host.write_credentials(user, credentials)
    evidence = host.collect_evidence(user, credentials)
    assert evidence.key_file == "ok" and evidence.reach == "ok"
    assert classify(evidence) == "transient"


def test_redact_removes_tokens_and_secrets_from_log_lines(credentials: HappyCredentials) -> None:
    line = (
        f"auth with {credentials.token} and {credentials.secret_b64} "
        "Bearer eyJhbGciOiJIUzI1NiJ9abcdefgh.eyJ1c2VyIjoiY2FiYyJ9abcdefgh.c2lnbmF0dXJlX2hlcmVfMTIz"
    )
    cleaned = redact(line, credentials)
    assert credentials.token not in cleaned and credentials.secret_b64 not in cleaned
    assert "eyJ" not in cleaned
    missing = DaemonEvidence(
        happy_on_path=False, key_file="ok", happy_server_url="u", reach="ok", log_tail=[]
    )
    assert classify(missing) == "environment" and "not on the box user's PATH" in describe(missing)


def test_box_user_names_are_validated() -> None:
    for bad in ("Root", "a b", "x;rm", "-x", "a" * 33, ""):
        with pytest.raises(ValueError):
            BoxUser(bad)


def test_three_box_users_on_three_servers_run_concurrently(
    box_fleet: BoxFleet, happy_double: HappyDouble
) -> None:
    boxes = box_fleet.start(3)
    client = HappyClient(happy_double.url)
    prefix = os.environ["BOX_USER_PREFIX"]
    names = [prefix + secrets.token_hex(6) for _ in boxes]

    def provision(pair: tuple[SSHBox, str]) -> None:
        box, name = pair
        secret = make_secret()
        creds = HappyCredentials(secret, client.create_account(secret))
        with BoxSession(box.target()) as session:
            host = BoxHost(session, default_happy_server_url=happy_double.url)
            user = _make_user(host, name)
            host.write_credentials(user, creds)
            assert host.start_daemon(user, timeout=30).exit_status == 0
            machine_id = host.read_machine_id(user)
            assert machine_id is not None
            wait_until(_machine_with_status(client, creds, machine_id, "running"))
            host.remove_user(user)
            assert host.leftovers(user) is None

    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(provision, zip(boxes, names, strict=True)))
    finally:
        for name in names:
            remove_product_box_users(name)
        for box in boxes:
            box_fleet.remove(box)


# --- regions: the daemon talks to its region's Happy server ---------------------------------


def test_a_region_happy_url_reaches_the_daemon_despite_the_logins_environment(
    box: SSHBox, happy_double: HappyDouble, user_name: str
) -> None:
    """The pool login's environment says HAPPY_SERVER_URL=<default double>; a box of a
    region with its own Happy server gets that server in its daemon's (env -i) environment
    and registers there."""
    with HappyDouble() as regional:
        secret = make_secret()
        creds = HappyCredentials(secret, HappyClient(regional.url).create_account(secret))
        with BoxSession(box.target(), command_timeout=60) as session:
            host = BoxHost(
                session, default_happy_server_url=happy_double.url, happy_server_url=regional.url
            )
            assert host.check_operator().happy_server_url == happy_double.url
            user = _make_user(host, user_name)
            host.write_credentials(user, creds)
            outcome = host.ensure_daemon(user, timeout=30)
            assert outcome.ok, outcome
            machine_id = host.read_machine_id(user)
            assert machine_id
            pid = host.liveness(user).pid
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"HAPPY_SERVER_URL={regional.url}".encode() in environ
        wait_until(_machine_with_status(HappyClient(regional.url), creds, machine_id, "running"))
        public_key = bytes(SigningKey(secret).verify_key)
        assert happy_double.account_for_public_key(public_key) is None
        assert regional.machines_for_public_key(public_key)
