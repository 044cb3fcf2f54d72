"""Bootstrap a pool server with Fabric: one idempotent run that leaves a host able to take
boxes, the same steps also rendered as cloud-init user-data for cloud instances.

Steps (each reports ``done`` or ``skipped``; a second run skips them all):

1. ``admin``: the login is root or may ``sudo -n`` (it creates one Unix user per box). This
   cannot be granted from outside: a login without it is refused.
2. ``nodejs``: ``node`` and ``npm`` present, else the configured install command runs as
   root (default: ``apt-get install nodejs npm``).
3. ``happy``: ``happy`` on the login's PATH (or in the npm prefix), else
   ``npm install -g --prefix P --allow-scripts=happy-coder <HAPPY_CODER_PACKAGE>`` as root,
   with a throw-away npm cache (nothing is left in root's home).
4. ``environment``: ``HAPPY_SERVER_URL`` (and ``PATH``, when happy's bin dir is not on it)
   in the login's non-interactive SSH sessions: ``pam_env`` sets ``KEY="value"`` lines in
   ``/etc/environment`` (read by sshd through PAM on Debian/Ubuntu, new sessions see it, no
   reload); ``sshd_setenv`` sets ``KEY=value`` tokens on the first ``SetEnv`` line of an sshd
   config file (default a drop-in in ``/etc/ssh/sshd_config.d/``) and reloads sshd. Skipped
   when a new session already has the wanted values.
5. ``verify``: over a NEW connection (sessions read their environment when they start),
   :meth:`BoxHost.check_operator` and :meth:`BoxHost.environment_problem`: root or sudo,
   ``happy`` on PATH, the URL set, and the Happy server reachable from the host.

The connection is a Fabric ``Connection`` from :mod:`app.integrations.fabric_ssh` (pinned
host key, no SSH config, gateway when the target has one); the verification uses the same
per-box paramiko path provisioning uses. Credentials are in ``connect_kwargs`` only: no
command line or log line carries them. Every remote command has its own timeout.

Size (over 400 lines, on purpose): the Fabric run and the cloud-init rendering are the same
steps in two forms; keeping them in one module keeps them identical.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from dataclasses import dataclass, replace

import yaml
from fabric import Connection

from app.config import BootstrapSettings
from app.errors import HostUnreachableError, PermanentError
from app.integrations import fabric_ssh
from app.integrations.box_host import BoxHost
from app.integrations.ssh import BoxSession, SSHTarget, fetch_host_key_fingerprint

log = logging.getLogger(__name__)

# The root scripts' PATH (sbin for apt-get, useradd...); the login's PATH is appended so a
# node installed elsewhere (e.g. /opt) is still found.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What sshd/pam_env accept unquoted and what we put between quotes: no blanks, no quotes,
# no backslashes, no `$`.
_SAFE_VALUE = re.compile(r"[^\s\"'\\$`]+")
_SPEC_VERSION = re.compile(r"^(?:@[^/@]+/)?[^@/\s]+@(\d[\w.+-]*)$")
_TARBALL_VERSION = re.compile(r"happy-coder-(\d[\w.+-]*)\.tgz$")


class BootstrapError(PermanentError):
    """The host could not be bootstrapped; ``safe_message`` says which step and why."""


@dataclass(frozen=True)
class BootstrapStep:
    name: str
    status: str  # "done" | "skipped"
    detail: str = ""


@dataclass(frozen=True)
class BootstrapReport:
    """What a bootstrap found and did."""

    host: str
    host_key_fingerprint: str
    steps: tuple[BootstrapStep, ...] = ()
    node_version: str | None = None
    npm_version: str | None = None
    happy_version: str | None = None
    happy_path: str | None = None
    happy_server_url: str | None = None
    verified: bool = False

    @property
    def changed(self) -> bool:
        return any(step.status == "done" for step in self.steps)

    def step(self, name: str) -> BootstrapStep | None:
        return next((s for s in self.steps if s.name == name), None)


# --- the step scripts (POSIX sh, run as root; shared with cloud-init) -----------------------

_NODE_SCRIPT = r"""
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  echo status=skipped
else
  if ! sh -c "$VB_NODE_INSTALL" >&2 </dev/null; then
    echo status=failed; echo "error=the Node.js install command failed"; exit 1
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo status=failed; echo "error=node or npm is still missing after the install command"; exit 1
  fi
  echo status=done
fi
echo "node=$(node --version 2>/dev/null)"; echo "npm=$(npm --version 2>/dev/null)"
"""

# VB_WANT: "missing" (install when happy is neither on the login's PATH nor in the prefix),
# "=<version>" (install unless that version is in the prefix), "always".
_HAPPY_SCRIPT = r"""
P="$VB_PREFIX"; [ -n "$P" ] || P=$(npm prefix -g 2>/dev/null)
[ -n "$P" ] || { echo status=failed; echo "error=cannot find npm's global prefix"; exit 1; }
pj="$P/lib/node_modules/happy-coder/package.json"
ver() {
  node -e 'try { console.log(require(process.argv[1]).version) } catch (e) {}' "$pj" 2>/dev/null
}
have=$(ver); onpath=$(PATH="$VB_PATH"; command -v happy 2>/dev/null || true)
need=no
case "$VB_WANT" in
  missing) [ -n "$onpath" ] || [ -x "$P/bin/happy" ] || need=yes ;;
  always) need=yes ;;
  *) [ "=$have" = "$VB_WANT" ] || need=yes ;;
esac
if [ "$need" = yes ]; then
  mkdir -p "$P"; c=$(mktemp -d)
  npm install -g --prefix "$P" --allow-scripts=happy-coder --no-audit --no-fund \
    --no-update-notifier --loglevel=error --cache "$c" "$VB_SPEC" >&2 </dev/null
  rc=$?; rm -rf "$c"
  [ "$rc" -eq 0 ] || { echo status=failed; echo "error=npm install exited $rc"; exit 1; }
  [ -x "$P/bin/happy" ] || { echo status=failed; echo "error=no $P/bin/happy"; exit 1; }
  have=$(ver); echo status=done
else
  echo status=skipped
fi
echo "prefix=$P"; echo "version=$have"; echo "onpath=$onpath"
"""

# Sets the keys in $VB_SET to $VB_V_<KEY> in $VB_FILE (format by $VB_METHOD), atomically,
# only when something changes; sshd_setenv then runs $VB_RELOAD.
_ENV_SCRIPT = r"""
f="$VB_FILE"; t="$f.vibebox-tmp.$$"
if ! { mkdir -p "$(dirname "$f")" && { [ -f "$f" ] || : > "$f"; }; }; then
  echo status=failed; echo "error=cannot create $f"; exit 1
fi
has=0; grep -qi '^[[:space:]]*setenv[[:space:]]' "$f" && has=1
awk -v method="$VB_METHOD" -v keys="$VB_SET" -v has="$has" '
BEGIN {
  n = split(keys, K, " "); for (i = 1; i <= n; i++) V[K[i]] = ENVIRON["VB_V_" K[i]]
  if (method == "sshd_setenv" && has == 0) {
    out = "SetEnv"; for (i = 1; i <= n; i++) out = out " " K[i] "=" V[K[i]]; print out; done = 1
  }
}
method == "pam_env" {
  line = $0; sub(/^[ \t]*export[ \t]+/, "", line)
  for (i = 1; i <= n; i++) if (index(line, K[i] "=") == 1) {
    if (!(K[i] in seen)) print K[i] "=\"" V[K[i]] "\""
    seen[K[i]] = 1; next
  }
  print; next
}
method == "sshd_setenv" && !done && tolower($1) == "setenv" {
  out = $1
  for (j = 2; j <= NF; j++) {
    tok = $j
    for (i = 1; i <= n; i++)
      if (index(tok, K[i] "=") == 1) { tok = K[i] "=" V[K[i]]; seen[K[i]] = 1 }
    out = out " " tok
  }
  for (i = 1; i <= n; i++) if (!(K[i] in seen)) out = out " " K[i] "=" V[K[i]]
  print out; done = 1; next
}
{ print }
END {
  if (method == "pam_env")
    for (i = 1; i <= n; i++) if (!(K[i] in seen)) print K[i] "=\"" V[K[i]] "\""
}
' "$f" > "$t" || { rm -f "$t"; echo status=failed; echo "error=cannot rewrite $f"; exit 1; }
if cmp -s "$f" "$t"; then
  rm -f "$t"; echo status=skipped
else
  chmod --reference="$f" "$t" 2>/dev/null || chmod 644 "$t"
  mv -f "$t" "$f" || { rm -f "$t"; echo status=failed; echo "error=cannot replace $f"; exit 1; }
  if [ "$VB_METHOD" = sshd_setenv ]; then
    if ! sh -c "$VB_RELOAD" >&2 </dev/null; then
      echo status=failed; echo "error=the sshd reload command failed"; exit 1
    fi
  fi
  echo status=done
fi
echo "file=$f"
"""

_CHECK_LOGIN = (
    'if [ "$(id -u)" -eq 0 ]; then echo admin=root;'
    " elif sudo -n true 2>/dev/null; then echo admin=sudo; else echo admin=no; fi;"
    ' echo "path=$PATH"; echo "happy=$(command -v happy || true)";'
    ' echo "url=${HAPPY_SERVER_URL:-}"'
)


def _as_root(script: str, env: dict[str, str]) -> str:
    """Command line running ``script`` with sh as root (``sudo -n`` unless the login is
    root), the login's PATH passed as $VB_PATH and ``env`` as variables (no secrets)."""
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (
        'VB_PATH="$PATH"; if [ "$(id -u)" -eq 0 ]; then set --; else set -- sudo -n; fi; '
        f'"$@" env VB_PATH="$VB_PATH" {assigns} PATH="{ROOT_PATH}:$VB_PATH"'
        f" sh -c {shlex.quote(script)}"
    )


def _values(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def spec_version(spec: str) -> str | None:
    """The exact version an npm spec asks for (``happy-coder@0.13.0`` -> ``0.13.0``; an
    ``npm pack`` tarball ``happy-coder-0.13.0.tgz`` too); None when it does not say."""
    match = _SPEC_VERSION.match(spec.strip()) or _TARBALL_VERSION.search(spec.strip())
    return match.group(1) if match else None


def _check_value(name: str, value: str) -> str:
    if not _SAFE_VALUE.fullmatch(value):
        raise BootstrapError(
            f"{name} {value!r} cannot be written to an environment file",
            safe_message=f"{name} must not contain blanks, quotes, backslashes or `$`.",
        )
    return value


# --- the bootstrap --------------------------------------------------------------------------


class _Host:
    """The Fabric connection of one bootstrap and its steps."""

    def __init__(
        self, target: SSHTarget, settings: BootstrapSettings, connect_timeout: float
    ) -> None:
        self.target = target
        self.settings = settings
        self.where = target.where
        self.connection: Connection = fabric_ssh.fabric_connection(
            target, connect_timeout=connect_timeout
        )

    def close(self) -> None:
        self.connection.close()

    def run(self, command: str, *, timeout: float) -> fabric_ssh.FabricResult:
        return fabric_ssh.run(self.connection, command, timeout=timeout, where=self.where)

    def root_step(
        self, step: str, script: str, env: dict[str, str], *, timeout: float
    ) -> dict[str, str]:
        result = self.run(_as_root(script, env), timeout=timeout)
        values = _values(result.stdout)
        if result.exit_status != 0 or values.get("status") not in ("done", "skipped"):
            reason = values.get("error") or _tail(result.stderr) or _tail(result.stdout)
            if "sudo:" in result.stderr and "password" in result.stderr:
                reason = "sudo -n asked for a password"
            raise BootstrapError(
                f"bootstrap {self.where}: step {step} failed (exit {result.exit_status}): {reason}",
                safe_message=f"Bootstrap step {step} failed: {reason}",
            )
        return values


def _tail(text: str, lines: int = 3) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)[:500]


def bootstrap_host(
    target: SSHTarget,
    *,
    happy_server_url: str | None,
    settings: BootstrapSettings | None = None,
    allow_unpinned: bool = False,
    connect_timeout: float = 10.0,
    command_timeout: float = 60.0,
    happy_want: str = "missing",
) -> BootstrapReport:
    """Make ``target`` able to host boxes (idempotent; see the module docstring).

    ``happy_server_url`` None keeps whatever the host's sessions have (verification still
    requires one). ``allow_unpinned`` pins the key the host shows on first contact (cloud
    instances created a moment ago); otherwise ``target`` must carry a pin. ``happy_want``
    is ``missing`` for bootstrap; ``=<version>`` or ``always`` reinstall (upgrade-happy).
    Raises :class:`BootstrapError` (a step failed or verification found a problem),
    ``HostKeyMismatchError``, ``SSHAuthError`` or ``HostUnreachableError``.
    """
    settings = settings or BootstrapSettings()
    if target.host_key_fingerprint is None:
        if not allow_unpinned:
            raise PermanentError(
                f"ssh {target.where}: no pinned host key",
                safe_message="The server's host key must be pinned before bootstrap.",
            )
        seen = fetch_host_key_fingerprint(
            target.host, target.port, timeout=connect_timeout, gateway=target.gateway
        )
        log.warning("bootstrap %s: pinning the host key it showed: %s", target.where, seen)
        target = replace(target, host_key_fingerprint=seen)
    assert target.host_key_fingerprint is not None
    if happy_server_url is not None:
        _check_value("HAPPY_SERVER_URL", happy_server_url)
    steps: list[BootstrapStep] = []
    host = _Host(target, settings, connect_timeout)
    try:
        login = _values(host.run(_CHECK_LOGIN, timeout=command_timeout).stdout)
        admin = login.get("admin", "no")
        if admin not in ("root", "sudo"):
            raise BootstrapError(
                f"bootstrap {target.where}: the login is neither root nor allowed sudo -n",
                safe_message="The login is neither root nor allowed passwordless sudo.",
            )
        steps.append(BootstrapStep("admin", "skipped", "root" if admin == "root" else "sudo -n"))

        node = host.root_step(
            "nodejs",
            _NODE_SCRIPT,
            {"VB_NODE_INSTALL": settings.node_install_command},
            timeout=settings.install_timeout_seconds,
        )
        steps.append(
            BootstrapStep(
                "nodejs", node["status"], f"node {node.get('node')}, npm {node.get('npm')}"
            )
        )

        happy = host.root_step(
            "happy",
            _HAPPY_SCRIPT,
            {
                "VB_PREFIX": settings.npm_prefix or "",
                "VB_SPEC": settings.happy_coder_package,
                "VB_WANT": happy_want,
            },
            timeout=settings.install_timeout_seconds,
        )
        prefix_bin = happy.get("prefix", "").rstrip("/") + "/bin"
        detail = f"happy-coder {happy.get('version') or '?'} in {happy.get('prefix')}"
        steps.append(BootstrapStep("happy", happy["status"], detail))

        wanted: dict[str, str] = {}
        if happy_server_url is not None and login.get("url") != happy_server_url:
            wanted["HAPPY_SERVER_URL"] = happy_server_url
        login_path = login.get("path", "")
        if not happy.get("onpath") and prefix_bin not in login_path.split(":"):
            wanted["PATH"] = _check_value("PATH", f"{prefix_bin}:{login_path or ROOT_PATH}")
        if wanted:
            env = {
                "VB_FILE": settings.env_file,
                "VB_METHOD": settings.env_method,
                "VB_RELOAD": settings.sshd_reload_command,
                "VB_SET": " ".join(wanted),
                **{f"VB_V_{k}": v for k, v in wanted.items()},
            }
            result = host.root_step("environment", _ENV_SCRIPT, env, timeout=command_timeout)
            status = result["status"]
            detail = f"{', '.join(wanted)} in {settings.env_file} ({settings.env_method})"
        else:
            status, detail = "skipped", "the login's sessions already have it"
        steps.append(BootstrapStep("environment", status, detail))
    finally:
        host.close()

    # A reload (SIGHUP) is asynchronous: sshd may accept a connection or two with its old
    # configuration, so after an environment change verification gets a few seconds.
    check = verify_host(
        target,
        happy_server_url=happy_server_url,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        settle_for=10.0 if steps[-1].status == "done" else 0.0,
    )
    steps.append(BootstrapStep("verify", "skipped", "happy on PATH, URL set and reachable"))
    report = BootstrapReport(
        host=target.where,
        host_key_fingerprint=target.host_key_fingerprint,
        steps=tuple(steps),
        node_version=node.get("node") or None,
        npm_version=node.get("npm") or None,
        happy_version=happy.get("version") or None,
        happy_path=check.happy_path,
        happy_server_url=check.happy_server_url,
        verified=True,
    )
    log.info(
        "bootstrap %s: %s",
        target.where,
        ", ".join(f"{s.name} {s.status}" for s in report.steps),
    )
    return report


@dataclass(frozen=True)
class Verification:
    happy_path: str | None
    happy_server_url: str | None


def verify_host(
    target: SSHTarget,
    *,
    happy_server_url: str | None,
    connect_timeout: float = 10.0,
    command_timeout: float = 60.0,
    reconnect_for: float = 15.0,
    settle_for: float = 0.0,
) -> Verification:
    """Check over a NEW connection that the host can take boxes: root or sudo -n, happy on
    the login's PATH, HAPPY_SERVER_URL set (to ``happy_server_url`` when given) and the
    Happy server reachable from the host. Retries connecting for ``reconnect_for`` seconds
    (sshd may be reloading) and, for ``settle_for`` seconds, a check that finds a problem
    (sessions of a not yet reloaded sshd). Raises :class:`BootstrapError` with what is
    wrong."""
    deadline = time.monotonic() + reconnect_for
    settled = time.monotonic() + settle_for
    while True:
        try:
            with BoxSession(
                target, connect_timeout=connect_timeout, command_timeout=command_timeout
            ) as session:
                box_host = BoxHost(session, default_happy_server_url="")
                check = box_host.check_operator()
                problem = check.problem()
                if problem is None and not check.happy_server_url:
                    problem = "HAPPY_SERVER_URL is not set in the login's SSH sessions"
                if (
                    problem is None
                    and happy_server_url
                    and check.happy_server_url != (happy_server_url)
                ):
                    problem = (
                        f"the login's sessions have HAPPY_SERVER_URL={check.happy_server_url},"
                        f" not {happy_server_url}"
                    )
                if problem is None:
                    problem = box_host.environment_problem()
            if problem is None or time.monotonic() > settled:
                break
            time.sleep(0.3)
        except HostUnreachableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if problem is not None:
        raise BootstrapError(
            f"bootstrap {target.where}: verification failed: {problem}",
            safe_message=f"Verification failed: {problem}.",
        )
    return Verification(check.happy_path, check.happy_server_url)


# --- cloud-init -----------------------------------------------------------------------------


def bootstrap_script(*, happy_server_url: str, settings: BootstrapSettings | None = None) -> str:
    """The bootstrap's steps 2-4 as one root shell script (what cloud-init runs)."""
    settings = settings or BootstrapSettings()
    _check_value("HAPPY_SERVER_URL", happy_server_url)
    variables = {
        "VB_PATH": ROOT_PATH,
        "VB_NODE_INSTALL": settings.node_install_command,
        "VB_PREFIX": settings.npm_prefix or "",
        "VB_SPEC": settings.happy_coder_package,
        "VB_WANT": "missing",
        "VB_FILE": settings.env_file,
        "VB_METHOD": settings.env_method,
        "VB_RELOAD": settings.sshd_reload_command,
        "VB_V_HAPPY_SERVER_URL": happy_server_url,
    }
    lines = [
        "#!/bin/sh",
        "# VibeBox bootstrap (generated): Node.js, happy-coder, HAPPY_SERVER_URL.",
        f'export PATH="{ROOT_PATH}"',
        *(f"export {k}={shlex.quote(v)}" for k, v in variables.items()),
        "(",
        _NODE_SCRIPT.strip(),
        ") || exit 1",
        "(",
        _HAPPY_SCRIPT.strip(),
        ") > /run/vibebox-happy.out || exit 1",
        "cat /run/vibebox-happy.out",
        'P=$(sed -n "s/^prefix=//p" /run/vibebox-happy.out)',
        # happy's bin dir joins PATH when it is not one of the standard directories.
        'case ":$VB_PATH:" in *":$P/bin:"*) export VB_SET="HAPPY_SERVER_URL" ;;'
        ' *) export VB_SET="HAPPY_SERVER_URL PATH" VB_V_PATH="$P/bin:$VB_PATH" ;; esac',
        "(",
        _ENV_SCRIPT.strip(),
        ") || exit 1",
        "",
    ]
    return "\n".join(lines)


def _login_config(
    login_user: str, authorized_keys: tuple[str, ...] | list[str]
) -> dict[str, object]:
    config: dict[str, object] = {}
    keys = [k.strip() for k in authorized_keys if k.strip()]
    if login_user == "root":
        # With disable_root false, cloud-init gives root the default user's keys.
        config["disable_root"] = False
        if keys:
            config["ssh_authorized_keys"] = keys
    else:
        config["users"] = [
            "default",
            {
                "name": login_user,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": keys,
            },
        ]
    return config


def cloud_init_login_user_data(
    *, login_user: str = "root", authorized_keys: tuple[str, ...] | list[str] = ()
) -> str:
    """``#cloud-config`` user-data with only the pool login: ``root`` (root login allowed,
    ``authorized_keys`` installed) or ``login_user`` created with passwordless sudo and
    ``authorized_keys``. What the capacity code passes to every node it creates (small:
    within every provider's user-data limit); :func:`bootstrap_host` over SSH does the rest,
    so the two never run the bootstrap at the same time."""
    body = yaml.dump(
        _login_config(login_user, authorized_keys),
        Dumper=_LiteralDumper,
        sort_keys=False,
        default_flow_style=False,
        width=1000,
    )
    return "#cloud-config\n" + body


def cloud_init_user_data(
    *,
    happy_server_url: str,
    settings: BootstrapSettings | None = None,
    login_user: str = "root",
    authorized_keys: tuple[str, ...] | list[str] = (),
) -> str:
    """``#cloud-config`` user-data: the pool login (``root``, or a user with passwordless
    sudo) with ``authorized_keys``, and :func:`bootstrap_script` run once at first boot.
    The capacity code still calls :func:`bootstrap_host` when the node is up: it finds
    everything done, verifies, and pins the host key."""
    config = _login_config(login_user, authorized_keys)
    config["write_files"] = [
        {
            "path": "/usr/local/sbin/vibebox-bootstrap",
            "permissions": "0700",
            "owner": "root:root",
            "content": bootstrap_script(happy_server_url=happy_server_url, settings=settings),
        }
    ]
    config["runcmd"] = [["/usr/local/sbin/vibebox-bootstrap"]]
    body = yaml.dump(
        config, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=1000
    )
    return "#cloud-config\n" + body


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the script) as readable ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def report_json(report: BootstrapReport) -> str:
    """The report as JSON (CLI ``--json``)."""
    return json.dumps(
        {
            "host": report.host,
            "hostKeyFingerprint": report.host_key_fingerprint,
            "steps": [
                {"name": s.name, "status": s.status, "detail": s.detail} for s in report.steps
            ],
            "nodeVersion": report.node_version,
            "npmVersion": report.npm_version,
            "happyVersion": report.happy_version,
            "happyPath": report.happy_path,
            "happyServerUrl": report.happy_server_url,
            "verified": report.verified,
        },
        indent=2,
    )


__all__ = [
    "BootstrapError",
    "BootstrapReport",
    "BootstrapStep",
    "bootstrap_host",
    "bootstrap_script",
    "cloud_init_login_user_data",
    "cloud_init_user_data",
    "spec_version",
    "verify_host",
]
