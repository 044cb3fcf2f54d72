"""Real OpenSSH boxes for tests: one ``sshd -D`` per box on 127.0.0.1, each with its own
port, ed25519 host key and Unix user (so its own home and ``~/.happy``).

Needs root (useradd, sshd privilege separation), ``openssh-server`` and a system
``python3`` outside /root for the ``happy`` stand-in (see :class:`BoxRuntime`).

    with BoxFleet(happy_url) as fleet:
        box = fleet.new_box()
        box.target()          # -> SSHTarget with the pinned host key and the client key

Users are named ``vbx_<hex>`` and tagged with the creating pid in their GECOS field, so a
later run removes what a killed run left behind (:func:`sweep_stale_boxes`). Works under
pytest-xdist: names are random, ports come from the kernel, each worker has its own fleet.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.devtools.box_runtime import BoxRuntime, generate_ed25519_key, sshd_binary
from app.integrations.ssh import SSHTarget
from tests.support.tiers import require_full_tier

if TYPE_CHECKING:
    from app.services.pool import ServerSpec

USER_PREFIX = "vbx_"
GECOS_TAG = "vibebox-test pid="
SUDOERS_DIR = Path("/etc/sudoers.d")
# Box users the product creates (one per box) on these test servers are named with this
# process's prefix (BOX_USER_PREFIX, see box_user_prefix()), so a run removes its own and a
# later run removes those of a run that died, never anybody else's.
PRODUCT_GECOS = "vibebox-box "
PRODUCT_PREFIX_RE = re.compile(r"^vt([0-9a-z]+)-")
# Where a box user could leave files on this machine (what teardown must empty).
WRITABLE_TEST_PLACES = ("/tmp", "/var/tmp", "/dev/shm", "/var/spool/cron", "/run/lock")
DIR_PREFIX = "vbx-boxes-"

# useradd/userdel take /etc/passwd's lock and fail when it is busy: one at a time in this
# process, and retries against other processes (xdist workers).
_ACCOUNTS_LOCK = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _live_pids_of(uid: int) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == uid and _pid_alive(int(proc.name)):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _add_user(name: str) -> None:
    """A login with a home and /bin/sh, tagged (GECOS) with this process for the sweep."""
    _account_command(
        [
            "useradd",
            "--create-home",
            "--shell",
            "/bin/sh",
            "--comment",
            f"{GECOS_TAG}{os.getpid()}",
            name,
        ]
    )


def _account_command(args: list[str], *, ok: tuple[int, ...] = (0,)) -> None:
    """Run useradd/usermod/userdel, retrying while another process holds the lock."""
    deadline = time.monotonic() + 30
    with _ACCOUNTS_LOCK:
        while True:
            result = subprocess.run(args, capture_output=True, text=True, check=False)
            if result.returncode in ok:
                return
            busy = "lock" in result.stderr.lower() or result.returncode in (1, 10)
            if not busy or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
                )
            time.sleep(0.05 + secrets.randbelow(100) / 1000)


def _remove_user(user: str) -> None:
    subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, check=False)
    # -f: killed daemons are orphans that this machine's init reaps only lazily; until
    # then they are zombies of the user and plain userdel refuses.
    _account_command(["userdel", "-f", "-r", user], ok=(0, 6, 12))
    (SUDOERS_DIR / user).unlink(missing_ok=True)
    subprocess.run(["crontab", "-r", "-u", user], capture_output=True, check=False)


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if number == 0:
            return out


def box_user_prefix(pid: int | None = None) -> str:
    """BOX_USER_PREFIX for the product in this test process: ``vt<pid base 36>-``."""
    return f"vt{_base36(os.getpid() if pid is None else pid)}-"


def product_box_users(prefix: str | None = None) -> list[pwd.struct_passwd]:
    """Box users the product created with ``prefix`` (any test run's when None)."""
    return [
        e
        for e in pwd.getpwall()
        if e.pw_gecos.startswith(PRODUCT_GECOS)
        and PRODUCT_PREFIX_RE.match(e.pw_name)
        and (prefix is None or e.pw_name.startswith(prefix))
    ]


def remove_product_box_users(prefix: str) -> None:
    """Remove the product's box users of this run (what a failed teardown left)."""
    for entry in product_box_users(prefix):
        _remove_user(entry.pw_name)


def sweep_stale_boxes(base_dir: str = "/tmp") -> None:
    """Remove users, sshd processes and directories left by test runs that died."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(USER_PREFIX) and entry.pw_gecos.startswith(GECOS_TAG):
            owner = entry.pw_gecos[len(GECOS_TAG) :]
            if owner.isdigit() and not _pid_alive(int(owner)):
                _remove_user(entry.pw_name)
    for entry in product_box_users():
        match = PRODUCT_PREFIX_RE.match(entry.pw_name)
        if match and not _pid_alive(int(match.group(1), 36)):
            _remove_user(entry.pw_name)
    if SUDOERS_DIR.is_dir():
        for path in SUDOERS_DIR.glob(f"{USER_PREFIX}*"):
            try:
                pwd.getpwnam(path.name)
            except KeyError:
                path.unlink(missing_ok=True)
    marker = f"/{DIR_PREFIX}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"sshd" not in cmdline or marker not in cmdline:
            continue
        creator = cmdline.split(marker, 1)[1].split(b"-", 1)[0]
        if creator.isdigit() and not _pid_alive(int(creator)):
            os.kill(int(proc.name), signal.SIGKILL)
    for directory in Path(base_dir).glob(f"{DIR_PREFIX}*"):
        creator_pid = directory.name[len(DIR_PREFIX) :].split("-", 1)[0]
        if creator_pid.isdigit() and not _pid_alive(int(creator_pid)):
            shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class BoxAccount:
    """The Unix user the product created for one box (found by the box id in its GECOS),
    seen from outside, as root, independently of the code under test."""

    name: str
    uid: int
    home: Path

    @classmethod
    def of_box(cls, box_id: object) -> BoxAccount | None:
        marker = f"{PRODUCT_GECOS.strip()} box={box_id} "
        for entry in pwd.getpwall():
            if entry.pw_gecos.startswith(marker):
                return cls(entry.pw_name, entry.pw_uid, Path(entry.pw_dir))
        return None

    @property
    def happy_dir(self) -> Path:
        return self.home / ".happy"

    @property
    def access_key_path(self) -> Path:
        return self.happy_dir / "access.key"

    @property
    def daemon_state_path(self) -> Path:
        return self.happy_dir / "daemon.state.json"

    def exists(self) -> bool:
        try:
            return pwd.getpwnam(self.name).pw_uid == self.uid
        except KeyError:
            return False

    def uid_reused(self) -> bool:
        """The uid now belongs to another user (created after this one was deleted, e.g. by
        a test running in parallel): processes and files of the uid are then not ours."""
        try:
            return pwd.getpwuid(self.uid).pw_name != self.name
        except KeyError:
            return False

    def pids(self) -> list[int]:
        """Live (not zombie) processes of the uid while it is this user's (or nobody's)."""
        pids = _live_pids_of(self.uid)
        return [] if pids and self.uid_reused() else pids

    def kill(self, pid: int) -> None:
        """``kill -9`` one of this user's processes (a crash) and wait until it is gone."""
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def run(self, command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as this user (what a customer's Happy session could do)."""
        return subprocess.run(
            ["/usr/sbin/runuser", "-u", self.name, "--", "sh", "-c", command],
            cwd=str(self.home),
            env={"HOME": str(self.home), "PATH": "/usr/bin:/bin", "USER": self.name},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@dataclass(frozen=True)
class ClientKey:
    """An ed25519 key pair the tests log in with."""

    private_pem: str
    public_line: str

    @classmethod
    def generate(cls) -> ClientKey:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return cls(private.decode(), public.decode() + " vibebox-tests")


class SSHBox:
    """One box: a Unix user and an ``sshd -D`` process serving only that user."""

    def __init__(
        self,
        directory: Path,
        runtime: BoxRuntime,
        happy_url: str,
        client_key: ClientKey,
        *,
        password: str | None = None,
    ) -> None:
        self.user = USER_PREFIX + secrets.token_hex(4)
        self.directory = directory / self.user
        self.runtime = runtime
        self.happy_url = happy_url
        self.client_key = client_key
        self.password = password
        self.port = 0
        # PATH the login's sessions get (None: the runtime's, with `happy` on it); takes
        # effect on the next (re)start.
        self.path_override: str | None = None
        # A "bare" host: sessions get no `happy` on PATH and no HAPPY_SERVER_URL (what
        # `vibebox pool bootstrap` starts from).
        self.bare = False
        # Extra sshd_config lines (e.g. "AllowTcpForwarding no", "LogLevel DEBUG1").
        self.extra_config: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None

    # --- paths ---------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The pool login's home (the product keeps nothing of a box here)."""
        return Path(pwd.getpwnam(self.user).pw_dir)

    @property
    def host_key_path(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def config_path(self) -> Path:
        """This box's own sshd_config (a test may let the product edit it)."""
        return self.directory / "sshd_config"

    @property
    def sshd_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def host_key_fingerprint(self) -> str:
        """Computed from the .pub file, independently of the code under test."""
        blob = base64.b64decode(Path(f"{self.host_key_path}.pub").read_text().split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

    def target(self, **overrides: Any) -> SSHTarget:
        """How the code under test reaches this box (key login, pinned host key)."""
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "private_key": self.client_key.private_pem,
            "host_key_fingerprint": self.host_key_fingerprint,
        }
        fields.update(overrides)
        return SSHTarget(**fields)

    def server_spec(self, **fields: Any) -> ServerSpec:
        """What an operator enters to admit this box to the pool: its address and key login
        (the host key is pinned as presented), plus ``fields`` (resources, label, ...)."""
        from app.services.pool import ServerSpec

        target = self.target()
        return ServerSpec(
            host=target.host,
            port=target.port,
            user=target.user,
            private_key=target.private_key,
            **fields,
        )

    def sshd_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- lifecycle -----------------------------------------------------------------------

    def create(self) -> Self:
        """Create the user, its authorized_keys and host key, and start sshd."""
        self.directory.mkdir(mode=0o700)
        _add_user(self.user)
        if self.password is None:
            # A user without a password is "locked" and sshd refuses even its keys.
            _account_command(["usermod", "-p", "*", self.user])
        else:
            hashed = subprocess.run(
                ["openssl", "passwd", "-6", "-stdin"],
                input=self.password,
                text=True,
                capture_output=True,
                check=True,
            ).stdout.strip()
            _account_command(["usermod", "-p", hashed, self.user])
        entry = pwd.getpwnam(self.user)
        # The pool login is the operator's channel: passwordless sudo, a private home.
        sudoers = SUDOERS_DIR / self.user
        SUDOERS_DIR.mkdir(mode=0o755, exist_ok=True)
        sudoers.write_text(f"{self.user} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        Path(entry.pw_dir).chmod(0o700)
        ssh_dir = Path(entry.pw_dir) / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(self.client_key.public_line + "\n")
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self._write_host_key()
        self.start()
        return self

    def start(self) -> None:
        """Start sshd. The first start takes a free port (another on a race for it); a
        restart keeps the port, so targets made earlier still reach this box."""
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        first = self.port == 0
        for _ in range(5 if first else 1):
            if first:
                self.port = _free_port()
            config = self.directory / "sshd_config"
            config.write_text(self._config())
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    [sshd_binary(), "-D", "-e", "-f", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            if self._wait_ready():
                return
            self.stop()
            if "Address already in use" not in self.sshd_log()[log_start:]:
                break
        raise RuntimeError(f"sshd for {self.user} did not start:\n{self.sshd_log()[-2000:]}")

    def stop(self) -> None:
        """Stop this box's sshd (by its pid). Sessions already open die with it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def regenerate_host_key(self) -> None:
        """Give the box a new identity (the pinned fingerprint no longer matches)."""
        self.stop()
        self._write_host_key()
        self.start()

    def kill_login_processes(self) -> None:
        """Kill every process of the pool login user and wait for it."""
        uid = pwd.getpwnam(self.user).pw_uid
        subprocess.run(["pkill", "-KILL", "-u", self.user], capture_output=True, check=False)
        deadline = time.monotonic() + 2
        while _live_pids_of(uid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def destroy(self) -> None:
        # The user's processes first, so the still-running sshd reaps its session processes
        # (orphans linger as zombies until init gets to them).
        self.kill_login_processes()
        self.stop()
        _remove_user(self.user)
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- internals ---------------------------------------------------------------------

    def _write_host_key(self) -> None:
        for path in (self.host_key_path, Path(f"{self.host_key_path}.pub")):
            path.unlink(missing_ok=True)
        generate_ed25519_key(self.host_key_path, self.user)

    def _config(self) -> str:
        values = self.runtime.env(self.happy_url)
        if self.bare:
            values["PATH"] = "/usr/local/bin:/usr/bin:/bin"
            del values["HAPPY_SERVER_URL"]
        if self.path_override is not None:
            values["PATH"] = self.path_override
        env = " ".join(f"{k}={v}" for k, v in values.items())
        return "\n".join(
            [
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {self.host_key_path}",
                "PidFile none",
                f"AllowUsers {self.user}",
                "AuthorizedKeysFile .ssh/authorized_keys",
                "PubkeyAuthentication yes",
                f"PasswordAuthentication {'no' if self.password is None else 'yes'}",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                "UsePAM no",
                "UseDNS no",
                "PrintMotd no",
                "MaxStartups 200",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                f"SetEnv {env}",
                *self.extra_config,
                *(
                    []
                    if any(x.startswith("LogLevel") for x in self.extra_config)
                    else ["LogLevel VERBOSE"]
                ),
                "",
            ]
        )

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        """Ready = it answers with an SSH banner (listening alone can still race)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False


class BoxFleet:
    """Starts boxes (concurrently if asked) and tears all of them down, whatever happens."""

    def __init__(
        self, happy_url: str, *, base_dir: str = "/tmp", slim_daemons: bool = False
    ) -> None:
        require_full_tier("sshd boxes", "sshd")
        if os.geteuid() != 0:
            raise RuntimeError("SSH test boxes need root (useradd, sshd)")
        sshd_binary()
        sweep_stale_boxes(base_dir)
        self.happy_url = happy_url
        # Box users must reach runtime/ (0755) but nothing else: 0711 on the top directory.
        self.directory = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=base_dir))
        self.directory.chmod(0o711)
        # slim_daemons: the `happy` daemons re-execute themselves small once running
        # (hundreds of boxes on one machine: bench/fleet.py).
        self.runtime = BoxRuntime.prepare(self.directory / "runtime", slim=slim_daemons)
        (self.directory / "boxes").mkdir(mode=0o700)
        self.client_key = ClientKey.generate()
        self.boxes: list[SSHBox] = []
        self._lock = threading.Lock()
        atexit.register(self.close)  # finalizers skipped (e.g. a crash) still clean up

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_box(
        self,
        *,
        password: str | None = None,
        happy_url: str | None = None,
        bare: bool = False,
        extra_config: tuple[str, ...] = (),
    ) -> SSHBox:
        """A new box; ``happy_url`` overrides the HAPPY_SERVER_URL its sessions get (e.g. an
        address nothing listens on, for a server that cannot reach Happy). ``bare``: no
        ``happy`` on the login's PATH and no HAPPY_SERVER_URL (a host to bootstrap);
        ``extra_config``: more sshd_config lines."""
        box = SSHBox(
            self.directory / "boxes",
            self.runtime,
            happy_url or self.happy_url,
            self.client_key,
            password=password,
        )
        box.bare = bare
        box.extra_config = list(extra_config)
        with self._lock:
            self.boxes.append(box)  # before create(): a half-made box is still cleaned up
        return box.create()

    def start(self, n: int) -> list[SSHBox]:
        """Start ``n`` boxes concurrently."""
        with ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
            return list(pool.map(lambda _: self.new_box(), range(n)))

    def remove(self, box: SSHBox) -> None:
        with self._lock:
            if box not in self.boxes:
                return
            self.boxes.remove(box)
        box.destroy()

    def close(self) -> None:
        with self._lock:
            boxes, self.boxes = self.boxes, []
        if boxes:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda b: b.destroy(), boxes))
        prefix = os.environ.get("BOX_USER_PREFIX", "")
        if PRODUCT_PREFIX_RE.match(prefix):
            remove_product_box_users(prefix)
        shutil.rmtree(self.directory, ignore_errors=True)
        atexit.unregister(self.close)
