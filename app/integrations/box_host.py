"""A pool server seen through its operator login: one unprivileged Unix user per box.

The pool login (root, or a user with passwordless ``sudo``) is the operator's channel only.
Each box gets its OWN Unix user, created when the box is configured and deleted when it
ends: the Happy daemon and every session the customer starts through it run as that user.
A Happy session is a shell on the box for whoever holds the account's credentials, so a
customer's access ends only when every process of that uid is gone, and a Unix user is
never handed to a second customer (anything it wrote — ``authorized_keys``, a crontab,
``~/.bashrc``, systemd user units — is deleted with it).

Every operation is a short POSIX shell script run as root through the login (``sudo -n``
when the login is not root). Names are validated and quoted; secrets travel over stdin
only. The box user's environment is built explicitly (``env -i``): ``PATH`` from the pool
login's environment; ``HAPPY_SERVER_URL`` is the box's region's Happy server when one is
configured (``HAPPY_SERVER_URLS``), else the login's (the server's configuration), else the
backend's ``HAPPY_SERVER_URL``; ``HAPPY_HOME_DIR`` is the box user's ``~/.happy``.

Places an unprivileged user can write on a standard Debian/Ubuntu server, which teardown
empties and ``leftovers`` checks by uid: its home, ``/tmp``, ``/var/tmp``, ``/dev/shm``,
``/run/user/<uid>``, ``/run/lock``, the mail spool, the cron and at spools and systemd's
linger flag.

Size (over 400 lines, on purpose): this is the ONE interface to what runs on a pool
server for a box; its shell scripts are kept side by side so that creating a user and
proving by uid that nothing of it remains can be read, and reviewed, together.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass, field

from app.errors import PermanentError, TransientError
from app.integrations.happy import HappyCredentials
from app.integrations.ssh import BoxSession, CommandResult

USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# GECOS of every box user we create: which box, on which pool server (so a scrub of one
# server never touches the users of another, even when several share one host).
GECOS_PREFIX = "vibebox-box"
# Remote paths we empty (not temp files of ours).
WRITABLE_PLACES = (
    "/tmp",  # noqa: S108
    "/var/tmp",  # noqa: S108
    "/dev/shm",  # noqa: S108
    "/run/lock",
    "/var/mail",
    "/var/spool/mail",
    "/var/spool/cron",
    "/var/lib/systemd/linger",
)
_SERVER = "The server is not set up correctly."
# The root scripts' own PATH (useradd, runuser, pkill live in sbin on Debian).
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BoxEnvironmentError(PermanentError):
    """The server cannot host boxes as it is (no root/sudo, no ``happy``, no route to the
    Happy server): quarantine it and move the box; ``safe_message`` says what was found."""


@dataclass(frozen=True)
class BoxUser:
    """The Unix user a box runs as. ``uid`` is known once the user exists."""

    name: str
    uid: int | None = None

    def __post_init__(self) -> None:
        if not USER_NAME_RE.match(self.name):
            raise ValueError(f"not a valid box user name: {self.name!r}")


INSTALL_HAPPY = "npm install -g happy-coder --allow-scripts=happy-coder"
SET_HAPPY_URL = (
    "set HAPPY_SERVER_URL in the login environment (e.g. /etc/environment or sshd SetEnv) "
    "or open the route"
)


@dataclass(frozen=True)
class OperatorCheck:
    """What the pool login can do (checked when a server joins the pool)."""

    root: bool  # uid 0 or passwordless sudo works
    happy_path: str | None  # `command -v happy` in the login's environment
    happy_server_url: str | None  # HAPPY_SERVER_URL in the login's environment
    authorized_keys_digest: str  # sha256 of the login's authorized_keys ("" when none)
    # "version" of the happy-coder package `happy` resolves to (None: not found / not npm)
    happy_version: str | None = None

    def problem(self) -> str | None:
        if not self.root:
            return "the login is neither root nor allowed passwordless sudo (sudo -n)"
        if not self.happy_path:
            return f"`happy` is not on the login's PATH (install it with `{INSTALL_HAPPY}`)"
        return None


@dataclass(frozen=True)
class EnvironmentReport:
    """The admission preflight: can boxes work on this server? No secrets inside."""

    where: str  # user@host:port
    operator: OperatorCheck
    happy_server_url: str  # the URL box daemons will use
    url_source: str  # "login" (HAPPY_SERVER_URL of the login) | "backend" (ours, as fallback)
    reach: str  # "ok" | "unreachable: <error>" | "unknown" | "not checked"

    @property
    def happy_version(self) -> str:
        return self.operator.happy_version or "unknown"

    def problems(self) -> list[str]:
        """Each thing that stops boxes from working here, with the fix."""
        found: list[str] = []
        if not self.operator.root:
            found.append(
                f"the login {self.where} is neither root nor allowed passwordless sudo "
                "(sudo -n): give it root or a NOPASSWD sudoers rule"
            )
        if not self.operator.happy_path:
            found.append(
                f"`happy` is not on the PATH of {self.where}; install it with "
                f"`{INSTALL_HAPPY}` (the login's non-interactive PATH must find it)"
            )
        if self.reach.startswith("unreachable"):
            detail = self.reach.removeprefix("unreachable: ")
            via = (
                ""
                if self.url_source == "login"
                else " (the login has no HAPPY_SERVER_URL, so boxes use the backend's)"
            )
            found.append(
                f"{self.where} cannot reach the Happy server at {self.happy_server_url}{via} "
                f"({detail}): {SET_HAPPY_URL}"
            )
        return found

    def notes(self) -> list[str]:
        """What an operator should know although it does not stop admission."""
        notes: list[str] = []
        if self.url_source == "backend":
            notes.append(
                "HAPPY_SERVER_URL is not set in the login environment; boxes will use the "
                f"backend's HAPPY_SERVER_URL {self.happy_server_url or '(not given: unchecked)'}"
            )
        if self.reach == "unknown":
            notes.append(
                f"could not test the route to {self.happy_server_url} "
                "(neither curl nor python3 on the server)"
            )
        if self.operator.happy_path and self.operator.happy_version is None:
            notes.append(
                f"the happy-coder version behind {self.operator.happy_path} is unknown "
                "(not an npm install of happy-coder)"
            )
        return notes


@dataclass(frozen=True)
class DaemonLiveness:
    """The daemon as seen on the box: the pid in daemon.state.json, alive as the box user."""

    alive: bool
    pid: int | None = None


@dataclass(frozen=True)
class DaemonStart:
    """What :meth:`BoxHost.ensure_daemon` saw."""

    started: bool  # `happy daemon start` ran (the daemon was not alive before)
    exit_status: int  # of `happy daemon start` (0 when it did not run)
    output: str  # its last output line
    liveness: DaemonLiveness
    machine_id: str | None

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and self.liveness.alive


@dataclass(frozen=True)
class DaemonEvidence:
    """What a failed daemon start left behind, for :func:`classify`. No secrets inside."""

    happy_on_path: bool
    key_file: str  # "ok" | "missing" | "different"
    happy_server_url: str
    reach: str  # "ok" | "unreachable: <curl/python error>" | "unknown"
    log_tail: list[str] = field(default_factory=list)


def box_gecos(box_id: str, server_id: str) -> str:
    return f"{GECOS_PREFIX} box={box_id} server={server_id}"


class BoxHost:
    """Operations on one pool server for its box users, over one :class:`BoxSession`."""

    def __init__(
        self,
        session: BoxSession,
        *,
        default_happy_server_url: str = "",
        happy_server_url: str | None = None,
    ) -> None:
        self.session = session
        self.default_happy_server_url = default_happy_server_url
        # Set (a region's Happy server, HAPPY_SERVER_URLS): the box user's HAPPY_SERVER_URL,
        # whatever the login's environment says.
        self.happy_server_url = happy_server_url

    def with_happy_server_url(self, url: str | None) -> BoxHost:
        """The same server and connection, the box users' daemons pointed at ``url``."""
        return BoxHost(
            self.session,
            default_happy_server_url=self.default_happy_server_url,
            happy_server_url=url,
        )

    @property
    def where(self) -> str:
        t = self.session.target
        return f"{t.user}@{t.host}:{t.port}"

    # --- plumbing ------------------------------------------------------------------------

    def _wrap(self, script: str) -> str:
        """The command line that runs ``script`` with ``sh`` as root. The login's PATH and
        HAPPY_SERVER_URL are captured first (sudo resets the environment) as $VB_PATH and
        $VB_HAPPY; an explicit ``happy_server_url`` (the box's region) wins over the login's."""
        default = shlex.quote(self.default_happy_server_url)
        happy = (
            f"VB_HAPPY={shlex.quote(self.happy_server_url)}; "
            if self.happy_server_url
            else f'VB_HAPPY="${{HAPPY_SERVER_URL:-}}"; [ -n "$VB_HAPPY" ] || VB_HAPPY={default}; '
        )
        return (
            f'VB_PATH="$PATH"; {happy}'
            'if [ "$(id -u)" -eq 0 ]; then set --; else set -- sudo -n; fi; '
            f'"$@" env VB_PATH="$VB_PATH" VB_HAPPY="$VB_HAPPY" PATH={_ROOT_PATH}'
            f" sh -c {shlex.quote(script)}"
        )

    def _as_root(
        self, script: str, *, stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        result = self.session.run(self._wrap(script), stdin=stdin, timeout=timeout)
        if result.exit_status != 0 and "sudo:" in result.output and "password" in result.output:
            raise BoxEnvironmentError(
                f"ssh {self.where}: sudo -n refused: {_last_line(result.output)}",
                safe_message="The server's login may not use sudo without a password.",
            )
        return result

    def _checked(self, result: CommandResult, what: str, safe: str) -> CommandResult:
        if result.exit_status != 0:
            raise TransientError(
                f"ssh {self.where}: {what} failed (exit {result.exit_status}): "
                f"{_last_line(result.output)}",
                safe_message=safe,
            )
        return result

    @staticmethod
    def _user_vars(user: BoxUser) -> str:
        return f"U={shlex.quote(user.name)}; "

    # --- admission -------------------------------------------------------------------------

    def check_operator(self) -> OperatorCheck:
        """Can this login administer box users? (root or ``sudo -n``; ``happy`` on PATH and
        the version of the happy-coder package it belongs to, read from its package.json:
        ``happy --version`` may start a login or a daemon)."""
        result = self.session.run(
            'if [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; then echo root=yes;'
            " else echo root=no; fi;"
            ' echo "happy=$(command -v happy || true)";'
            ' echo "url=${HAPPY_SERVER_URL:-}";'
            + _HAPPY_VERSION
            + ' k="$HOME/.ssh/authorized_keys";'
            ' if [ -f "$k" ]; then echo "keys=$(sha256sum < "$k" | cut -c1-64)";'
            " else echo keys=; fi"
        )
        values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
        version = values.get("version", "")
        return OperatorCheck(
            root=values.get("root") == "yes",
            happy_path=values.get("happy") or None,
            happy_server_url=values.get("url") or None,
            authorized_keys_digest=values.get("keys", ""),
            happy_version=version if _VERSION_RE.match(version) else None,
        )

    def check_environment(self) -> EnvironmentReport:
        """The admission preflight, as the pool login: root/sudo, ``happy`` on the login
        PATH (and its version), HAPPY_SERVER_URL in the login environment (else the
        backend's, which box users then get) and a route from the server to that URL."""
        operator = self.check_operator()
        url = operator.happy_server_url or self.default_happy_server_url
        source = "login" if operator.happy_server_url else "backend"
        reach = "not checked"
        if url:
            result = self.session.run(
                f"u={shlex.quote(url)}; " + _REACH_CHECK + "exit 0", timeout=30
            )
            values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
            reach = values.get("reach", "unknown")[:300]
        return EnvironmentReport(self.where, operator, url, source, reach)

    def environment_problem(self) -> str | None:
        """Why this server cannot host boxes now (None: it can): the login's rights,
        ``happy`` on its PATH, and a route from the server to its Happy server."""
        problem = self.check_operator().problem()
        if problem is not None:
            return problem
        result = self._as_root('u="$VB_HAPPY"; echo "url=$u"; ' + _REACH_CHECK, timeout=30)
        values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
        reach = values.get("reach", "unknown")
        if reach.startswith("unreachable"):
            detail = reach.removeprefix("unreachable: ")
            return f"the server cannot reach the Happy server at {values.get('url')} ({detail})"
        return None

    def login_keys_digest(self) -> str:
        """sha256 of the pool login's ``~/.ssh/authorized_keys`` ("" when it has none)."""
        return self.check_operator().authorized_keys_digest

    # --- the box user ----------------------------------------------------------------------

    def ensure_user(self, user: BoxUser, gecos: str) -> int:
        """Create the box user (idempotent) with a private home; return its uid.

        An existing user is reused only if it carries our GECOS for this very box."""
        script = (
            self._user_vars(user) + f"G={shlex.quote(gecos)}; "
            'if id -u "$U" >/dev/null 2>&1; then'
            '  cur=$(getent passwd "$U" | cut -d: -f5);'
            '  [ "$cur" = "$G" ] || { echo "foreign user $U"; exit 3; };'
            " else"
            '  useradd --create-home --user-group --shell /bin/bash --comment "$G" "$U"'
            "  || exit 4;"
            " fi; "
            'H=$(getent passwd "$U" | cut -d: -f6); chmod 700 "$H" && '
            'install -d -m 700 -o "$U" -g "$(id -g "$U")" "$H/.happy" && '
            'echo "uid=$(id -u "$U")"'
        )
        result = self._as_root(script)
        if result.exit_status == 3:
            raise BoxEnvironmentError(
                f"ssh {self.where}: user {user.name} exists and is not ours",
                safe_message="The server already has a user with this box's name.",
            )
        if result.exit_status == 127 or "useradd: not found" in result.output:
            raise BoxEnvironmentError(f"ssh {self.where}: useradd is missing", safe_message=_SERVER)
        self._checked(result, "creating the box user", "Could not configure the server.")
        match = re.search(r"uid=(\d+)", result.output)
        if match is None:
            raise TransientError(
                f"ssh {self.where}: no uid in {result.output[-200:]!r}",
                safe_message="Could not configure the server.",
            )
        return int(match.group(1))

    def _run_as(self, user: BoxUser, command: str) -> str:
        """Shell text that runs ``command`` (a shell command line) as the box user, in its
        home, with the box environment and nothing else."""
        return (
            self._user_vars(user)
            + 'H=$(getent passwd "$U" | cut -d: -f6) || exit 70; cd "$H" || exit 70; '
            'runuser -u "$U" -- env -i HOME="$H" USER="$U" LOGNAME="$U" SHELL=/bin/bash'
            ' LANG=C.UTF-8 PATH="$VB_PATH" HAPPY_HOME_DIR="$H/.happy"'
            f' HAPPY_SERVER_URL="$VB_HAPPY" sh -c {shlex.quote(command)}'
        )

    def write_credentials(self, user: BoxUser, creds: HappyCredentials) -> None:
        """``~/.happy/access.key`` of the box user (0600, dir 0700), written atomically by
        that user from stdin (never on a command line). Idempotent."""
        payload = creds.access_key_json().encode()
        inner = (
            'umask 077 && d="$HAPPY_HOME_DIR" && mkdir -p "$d" && chmod 700 "$d"'
            ' && t="$d/access.key.tmp.$$" && trap \'rm -f "$t"\' EXIT'
            f' && cat > "$t" && test "$(wc -c < "$t")" -eq {len(payload)}'
            ' && mv -f "$t" "$d/access.key"'
        )
        result = self._as_root(self._run_as(user, inner), stdin=payload)
        self._checked(result, "writing access.key", "Could not configure the server.")

    def liveness(self, user: BoxUser) -> DaemonLiveness:
        """Is the pid in the box user's daemon.state.json a live process of that user?"""
        script = self._user_vars(user) + _LIVENESS + "live"
        result = self._checked(
            self._as_root(script), "reading the daemon's pid", "Could not read the daemon."
        )
        return _parse_liveness(result.output)

    def ensure_daemon(self, user: BoxUser, *, timeout: float) -> DaemonStart:
        """One round trip: start the box user's daemon unless its pid is alive, then report
        liveness and the machine id (the hot path of provisioning and ``start``)."""
        start = self._run_as(user, "happy daemon start")
        script = (
            self._user_vars(user)
            + _LIVENESS
            + 'case "$(live)" in alive*) echo started=0; rc=0;; *) echo started=1;'
            f" out=$({start} 2>&1); rc=$?;"
            ' echo "out=$(echo "$out" | tail -n 1)";; esac; '
            'echo "rc=$rc"; echo "live=$(live)"; ' + _MACHINE_ID
        )
        result = self._as_root(script, timeout=timeout)
        values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
        if "rc" not in values:
            raise TransientError(
                f"ssh {self.where}: starting the daemon of {user.name} gave no report "
                f"(exit {result.exit_status}): {_last_line(result.output)}",
                safe_message="Could not start the Happy daemon.",
            )
        return DaemonStart(
            started=values.get("started") == "1",
            exit_status=int(values["rc"]) if values["rc"].isdigit() else -1,
            output=values.get("out", ""),
            liveness=_parse_liveness(values.get("live", "")),
            machine_id=values.get("machine") or None,
        )

    def start_daemon(self, user: BoxUser, *, timeout: float) -> CommandResult:
        """``happy daemon start`` as the box user (rc 0 also when it already runs)."""
        return self._as_root(self._run_as(user, "happy daemon start"), timeout=timeout)

    def end_all_processes(self, user: BoxUser, *, graceful_daemon: bool = True) -> int:
        """Power-off for a box: ``happy daemon stop`` (so the daemon reports shutting-down),
        then end EVERY process of the box user — sessions, nohup'd, setsid'd and
        double-forked ones — and confirm by uid that none is left. Files stay.
        Returns how many processes had to be killed."""
        graceful = (
            self._run_as(user, "timeout 15 happy daemon stop >/dev/null 2>&1 || true") + "; "
            if graceful_daemon
            else ""
        )
        script = (
            self._user_vars(user)
            + 'uid=$(id -u "$U" 2>/dev/null) || { echo "killed=0"; exit 0; }; '
            + graceful
            + _KILL_UID
            + 'echo "killed=$n"; [ "$left" -eq 0 ] || { echo "left=$left"; exit 5; }'
        )
        result = self._as_root(script, timeout=60)
        if result.exit_status == 5:
            raise TransientError(
                f"ssh {self.where}: processes of {user.name} survived SIGKILL: "
                f"{_last_line(result.output)}",
                safe_message="The box's processes did not all stop yet.",
            )
        self._checked(result, "ending the box's processes", "Could not stop the box.")
        match = re.search(r"killed=(\d+)", result.output)
        return int(match.group(1)) if match else 0

    def read_machine_id(self, user: BoxUser) -> str | None:
        script = self._user_vars(user) + (
            'H=$(getent passwd "$U" | cut -d: -f6) && cat "$H/.happy/settings.json" 2>/dev/null'
            " || true"
        )
        result = self._as_root(script)
        match = re.search(r'"machineId"\s*:\s*"([^"]{1,64})"', result.output)
        return match.group(1) if match else None

    # --- teardown ---------------------------------------------------------------------------

    def remove_user(self, user: BoxUser) -> None:
        """Delete the box user and everything it left: processes (by uid), crontab, at
        jobs, lingering and user units, its home, its files in the writable places.
        Idempotent: a user already gone (uid known) still gets its leftovers removed."""
        uid = "" if user.uid is None else str(user.uid)
        places = " ".join(WRITABLE_PLACES)
        script = (
            self._user_vars(user)
            + f'uid=$(id -u "$U" 2>/dev/null) || uid={shlex.quote(uid)}; '
            + _FORGET_REUSED_UID
            + '[ -n "$uid" ] || exit 0; '
            '[ "$uid" -ne 0 ] || { echo "refusing uid 0"; exit 9; }; '
            "if [ -d /run/systemd/system ]; then"
            '  loginctl disable-linger "$U" >/dev/null 2>&1;'
            '  loginctl terminate-user "$U" >/dev/null 2>&1;'
            '  systemctl stop "user@$uid.service" >/dev/null 2>&1; fi; '
            + _KILL_UID
            + 'command -v crontab >/dev/null && crontab -r -u "$U" >/dev/null 2>&1; '
            'rm -f "/var/spool/cron/crontabs/$U" "/var/spool/cron/$U" '
            '"/var/lib/systemd/linger/$U"; '
            'if id -u "$U" >/dev/null 2>&1; then'
            '  H=$(getent passwd "$U" | cut -d: -f6);'
            '  userdel -f -r "$U" >/dev/null 2>&1;'
            '  id -u "$U" >/dev/null 2>&1 && { echo "userdel failed"; exit 6; };'
            '  case "$H" in /home/*|/var/lib/vibebox/*) rm -rf "$H";; esac;'
            " fi; "
            f'for p in {places} "/run/user/$uid"; do'
            '  [ -e "$p" ] && find "$p" -xdev -uid "$uid" -depth -exec rm -rf {} + 2>/dev/null;'
            " done; "
            'rm -rf "/run/user/$uid"; '
            'getent group "$U" >/dev/null && groupdel "$U" >/dev/null 2>&1; '
            "exit 0"
        )
        result = self._as_root(script, timeout=120)
        self._checked(result, f"removing box user {user.name}", "Could not clean the server.")

    def leftovers(self, user: BoxUser, *, login_keys_digest: str | None = None) -> str | None:
        """What of ``user`` is still on the server, proven by uid (None: nothing)."""
        uid = "" if user.uid is None else str(user.uid)
        places = " ".join(WRITABLE_PLACES)
        script = (
            self._user_vars(user)
            + 'id -u "$U" >/dev/null 2>&1 && echo "problem=the user $U still exists"; '
            + f'uid=$(id -u "$U" 2>/dev/null) || uid={shlex.quote(uid)}; '
            + _FORGET_REUSED_UID
            + 'if [ -n "$uid" ]; then'
            "  n=$(ps -e -o uid= -o stat= | awk -v u=\"$uid\" '$1==u && $2 !~ /^Z/' | wc -l);"
            '  [ "$n" -eq 0 ] || echo "problem=$n processes of uid $uid still run";'
            f'  for p in {places} "/run/user/$uid" "/home/$U"; do'
            '    [ -e "$p" ] || continue;'
            '    f=$(find "$p" -xdev -uid "$uid" -print 2>/dev/null | head -n 3 | tr "\\n" " ");'
            '    [ -z "$f" ] || echo "problem=files of uid $uid remain: $f";'
            "  done;"
            " fi; "
            '[ -e "/var/spool/cron/crontabs/$U" ] && echo "problem=a crontab of $U remains"; '
            "exit 0"
        )
        result = self._checked(
            self._as_root(script), "checking the server", "Could not check the server."
        )
        problems = [
            line.split("=", 1)[1]
            for line in result.output.splitlines()
            if line.startswith("problem=")
        ]
        if login_keys_digest is not None:
            now = self.login_keys_digest()
            if now != login_keys_digest:
                problems.append("the pool login's authorized_keys changed during the box's life")
        return "; ".join(problems) if problems else None

    def box_users(self, server_id: str) -> list[BoxUser]:
        """Every box user we created on this server (by GECOS), e.g. for a scrub."""
        result = self._checked(
            self.session.run("getent passwd"), "listing users", "Could not check the server."
        )
        users = []
        for line in result.output.splitlines():
            parts = line.split(":")
            if len(parts) < 7 or not parts[2].isdigit():
                continue
            gecos = parts[4]
            ours = gecos.startswith(GECOS_PREFIX + " ") and f" server={server_id}" in gecos
            if ours and USER_NAME_RE.match(parts[0]):
                users.append(BoxUser(parts[0], int(parts[2])))
        return users

    # --- diagnosis ------------------------------------------------------------------------

    def collect_evidence(self, user: BoxUser, creds: HappyCredentials) -> DaemonEvidence:
        """Why did the daemon not come up? Key file, ``happy`` on PATH, the route to the
        Happy server (tried as the box user), the newest daemon log lines (redacted)."""
        expected = hashlib.sha256(creds.access_key_json().encode()).hexdigest()
        probe = (
            'u="$HAPPY_SERVER_URL"; echo "url=$u"; '
            "command -v happy >/dev/null && echo happy=yes || echo happy=no; "
            'f="$HAPPY_HOME_DIR/access.key"; '
            'if [ -f "$f" ]; then echo "key=$(sha256sum < "$f" | cut -c1-64)"; '
            "else echo key=missing; fi; "
            + _REACH_CHECK
            + 'l=$(ls -t "$HAPPY_HOME_DIR/logs" 2>/dev/null | head -n 1); '
            '[ -n "$l" ] && tail -n 15 "$HAPPY_HOME_DIR/logs/$l" | sed "s/^/log=/"; exit 0'
        )
        result = self._as_root(self._run_as(user, probe), timeout=30)
        values: dict[str, str] = {}
        log_tail: list[str] = []
        for line in result.output.splitlines():
            key, _, value = line.partition("=")
            if key == "log":
                log_tail.append(redact(value, creds))
            elif key in ("url", "happy", "key", "reach") and key not in values:
                values[key] = value
        key = values.get("key", "missing")
        return DaemonEvidence(
            happy_on_path=values.get("happy") == "yes",
            key_file="missing" if key == "missing" else ("ok" if key == expected else "different"),
            happy_server_url=values.get("url", ""),
            reach=redact(values.get("reach", "unknown"), creds)[:300],
            log_tail=log_tail[-15:],
        )


# Defines `live` (needs $U): prints "alive PID", "dead PID" or "none" for the pid in the box
# user's daemon.state.json (alive = a non-zombie process of that uid). Sets $H and $uid.
_LIVENESS = (
    'H=$(getent passwd "$U" | cut -d: -f6); uid=$(id -u "$U" 2>/dev/null); '
    'live() { [ -n "$uid" ] || { echo none; return; }; '
    "pid=$(sed -n 's/.*\"pid\"[[:space:]]*:[[:space:]]*\\([0-9][0-9]*\\).*/\\1/p' "
    '"$H/.happy/daemon.state.json" 2>/dev/null | head -n 1); '
    '[ -n "$pid" ] || { echo none; return; }; '
    'owner=$(stat -c %u "/proc/$pid" 2>/dev/null || echo x); '
    "state=$(sed 's/.*) //' \"/proc/$pid/stat\" 2>/dev/null | cut -d' ' -f1); "
    'if [ "$owner" = "$uid" ] && [ -n "$state" ] && [ "$state" != Z ]; then'
    ' echo "alive $pid"; else echo "dead $pid"; fi; }; '
)


def _parse_liveness(text: str) -> DaemonLiveness:
    words = text.split()
    for i, word in enumerate(words[:-1]):
        if word in ("alive", "dead") and words[i + 1].isdigit():
            return DaemonLiveness(word == "alive", int(words[i + 1]))
    return DaemonLiveness(False, None)


# Prints "machine=<id>" from the box user's settings.json (needs $H).
_MACHINE_ID = (
    r"""m=$(sed -n 's/.*"machineId"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' """
    r""""$H/.happy/settings.json" 2>/dev/null | head -n 1); echo "machine=$m" """
)

# Prints "version=<x>": the "version" of the happy-coder package.json above the real path of
# `command -v happy` (npm links bin/happy into the package), without running happy.
_HAPPY_VERSION = (
    " p=$(command -v happy 2>/dev/null); v=;"
    ' if [ -n "$p" ]; then d=$(dirname "$(readlink -f "$p" 2>/dev/null || echo "$p")"); i=0;'
    '  while [ -n "$d" ] && [ "$d" != / ] && [ $i -lt 8 ]; do i=$((i+1));'
    '   if [ -f "$d/package.json" ] && grep -q \'"name"[[:space:]]*:[[:space:]]*"happy-coder"\''
    ' "$d/package.json"; then'
    '    v=$(sed -n \'s/^[[:space:]]*"version"[[:space:]]*:[[:space:]]*"\\([^"]*\\)".*/\\1/p\''
    ' "$d/package.json" | head -n 1); break; fi;'
    '   d=$(dirname "$d"); done; fi; echo "version=$v";'
)
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,39}$")

# Does $u answer HTTP at all (any status is an answer)? curl, else python3; prints
# "reach=ok", "reach=unreachable: <error>" or "reach=unknown".
_REACH_CHECK = (
    "if command -v curl >/dev/null; then"
    '  e=$(curl -sS -o /dev/null -m 5 "$u" 2>&1) && echo reach=ok'
    '  || echo "reach=unreachable: $(echo "$e" | tail -n 1)";'
    " elif command -v python3 >/dev/null; then"
    "  python3 -c 'import sys,urllib.request,urllib.error\n"
    'try:\n urllib.request.urlopen(sys.argv[1], timeout=5); print("reach=ok")\n'
    'except urllib.error.HTTPError: print("reach=ok")\n'
    'except Exception as e: print("reach=unreachable: %s" % e)\' "$u";'
    " else echo reach=unknown; fi; "
)

# SIGSTOP first so nothing forks while we kill, then SIGKILL; repeat until no live (non-
# zombie) process of the uid remains. Sets $n (processes killed) and $left.
# When the box user is gone, its old uid may already belong to a user created since (useradd
# hands out the highest free uid again): a repeated teardown must then leave that uid alone,
# or it would kill another box's processes and delete its files. Clears $uid in that case.
_FORGET_REUSED_UID = (
    'if ! id -u "$U" >/dev/null 2>&1 && [ -n "$uid" ]'
    ' && getent passwd "$uid" >/dev/null 2>&1; then'
    ' echo "note=uid $uid now belongs to $(getent passwd "$uid" | cut -d: -f1)"; uid=""; fi; '
)
_KILL_UID = (
    "n=0; left=0; i=0; while [ $i -lt 50 ]; do i=$((i+1));"
    " pids=$(ps -e -o pid= -o uid= -o stat= | awk -v u=\"$uid\" '$2==u && $3 !~ /^Z/ {print $1}');"
    ' [ -z "$pids" ] && { left=0; break; };'
    " set -- $pids; n=$((n+$#)); left=$#;"
    " kill -STOP $pids 2>/dev/null; kill -KILL $pids 2>/dev/null; sleep 0.1; done; "
)

_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}")
_BASE64_LIKE = re.compile(r"[A-Za-z0-9+/_\-]{40,}={0,2}")


def redact(text: str, creds: HappyCredentials | None = None) -> str:
    """Remove anything credential-shaped from a line from the box (tokens, secrets)."""
    if creds is not None:
        text = text.replace(creds.token, "[token]").replace(creds.secret_b64, "[secret]")
    text = _TOKEN_LIKE.sub("[token]", text)
    return _BASE64_LIKE.sub("[redacted]", text)[:300]


def classify(evidence: DaemonEvidence) -> str:
    """``environment`` (quarantine the server, move the box), ``credentials`` (rewrite the
    key file / refresh the token and retry) or ``transient``."""
    if not evidence.happy_on_path:
        return "environment"
    if evidence.reach.startswith("unreachable"):
        return "environment"
    if evidence.key_file != "ok":
        return "credentials"
    return "transient"


def describe(evidence: DaemonEvidence) -> str:
    """One operator-readable sentence of what was found."""
    if not evidence.happy_on_path:
        return f"`happy` is not on the box user's PATH (install it with `{INSTALL_HAPPY}`)"
    if evidence.reach.startswith("unreachable"):
        return (
            "the daemon could not reach the Happy server at "
            f"{evidence.happy_server_url or '(unset)'}"
            f" ({evidence.reach.removeprefix('unreachable: ')})"
        )
    if evidence.key_file == "missing":
        return "the box's access.key was missing"
    if evidence.key_file == "different":
        return "the box's access.key did not hold the credentials we wrote"
    tail = evidence.log_tail[-1] if evidence.log_tail else "no daemon log"
    return f"the daemon did not come up; its log ends with: {tail}"


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""
