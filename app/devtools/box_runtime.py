"""DEVELOPMENT TOOL: what a box user runs on a test or demo box, made usable by that user.

A box user is an unprivileged Unix user: it cannot read /root (nor, usually, the project's
virtualenv or a pyenv python), and its sessions start with an environment built from
scratch. :class:`BoxRuntime` therefore lays out, in a directory every user can read:

- ``bin/happy``: the development Happy CLI stand-in (``app/devtools/happy_cli/happy``) with
  the system ``python3`` in its shebang and ``lib/`` on its ``sys.path`` (``slim=True``: its
  daemon re-executes itself as a small process once running, see the stand-in's doc);
- ``lib/``: PyNaCl (+ the cffi backend it loads), copied from this environment when the
  system python has the same minor version, else ``pip install --target``.

:func:`sshd_binary` finds OpenSSH's ``sshd`` (absolute: it re-executes itself);
:func:`generate_ed25519_key` makes a host or login key with ``ssh-keygen``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nacl

HAPPY_CLI = Path(__file__).parent / "happy_cli" / "happy"
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
NOBODY = 65534


def sshd_binary() -> str:
    path = shutil.which("sshd", path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise RuntimeError("sshd is not installed: apt-get install -y openssh-server")
    return path  # absolute: sshd re-executes itself for each connection


def generate_ed25519_key(path: Path, comment: str) -> None:
    """``ssh-keygen``: an ed25519 key pair without a passphrase at ``path`` and ``path.pub``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def readable_by_others(path: Path) -> bool:
    """Every directory from / down to ``path`` lets other users through (o+x)."""
    path = path.resolve()
    for part in [path, *path.parents]:
        try:
            if not part.stat().st_mode & 0o001:
                return False
        except FileNotFoundError:
            continue  # to be created (with 0755) below an existing, checked parent
    return True


@dataclass(frozen=True)
class BoxRuntime:
    """What box users execute: ``bin/happy`` and PyNaCl in ``lib/``, world-readable.

    Box users cannot read /root, so neither the project venv nor its pyenv python is usable
    by them. We run the stand-in with the system python3 and copy the venv's PyNaCl (+ the
    cffi backend it loads; both are self-contained, no shared libs) when the minor versions
    match, else pip-install PyNaCl for that python into ``lib/``.
    """

    root: Path
    python: str

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def lib_dir(self) -> Path:
        return self.root / "lib"

    @classmethod
    def prepare(cls, root: Path, *, slim: bool = False) -> BoxRuntime:
        """Build the runtime in ``root`` (replacing what an earlier build left there).
        ``slim``: the stand-in's daemon holds ~3 MB instead of ~12 MB once running (for
        hundreds of boxes on one machine, ``bench/fleet.py``)."""
        python = next((p for p in SYSTEM_PYTHONS if os.access(p, os.X_OK)), None)
        if python is None:
            raise RuntimeError(
                "boxes on this machine need a system python3 outside /root: "
                "apt-get install -y python3"
            )
        runtime = cls(root, python)
        if root.exists():
            shutil.rmtree(root)
        runtime.bin_dir.mkdir(parents=True)
        runtime.lib_dir.mkdir()
        runtime._install_pynacl()
        happy = runtime.bin_dir / "happy"
        source = HAPPY_CLI.read_text().split("\n", 1)[1]
        # The box users' environment is built from scratch (no PYTHONPATH): the stand-in
        # finds PyNaCl itself.
        launcher = f"import sys; sys.path.insert(0, {str(runtime.lib_dir)!r})"
        if slim:
            launcher += "; HAPPY_STANDIN_SLIM = True"
        happy.write_text(f"#!{python}\n{launcher}\n{source}")
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() or path == happy else 0o644)
        runtime._check_usable_by_others()
        return runtime

    def _install_pynacl(self) -> None:
        version = subprocess.run(
            [self.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if version == f"{sys.version_info.major}.{sys.version_info.minor}":
            import _cffi_backend  # the compiled module PyNaCl loads

            shutil.copytree(
                Path(nacl.__file__).parent,
                self.lib_dir / "nacl",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            shutil.copy2(_cffi_backend.__file__, self.lib_dir)
            return
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--target",
                str(self.lib_dir),
                "--only-binary=:all:",
                "--python-version",
                version,
                "pynacl",
            ],
            check=True,
        )

    def _check_usable_by_others(self) -> None:
        """Run the stand-in and import PyNaCl as ``nobody`` (through ``sudo -n`` when this
        process is not root), with an environment built from scratch as a box user's is."""
        result = _run_as_nobody(
            [str(self.bin_dir / "happy"), "daemon", "status"],
            {"HAPPY_HOME_DIR": "/nonexistent/.happy", "PATH": "/usr/bin:/bin"},
        )
        probe = _run_as_nobody(
            [self.python, "-c", "import nacl.secret"], {"PYTHONPATH": str(self.lib_dir)}
        )
        if probe.returncode != 0 or "Daemon is" not in result.stdout + result.stderr:
            raise RuntimeError(
                f"the box runtime in {self.root} is not usable by an unprivileged user (are "
                f"its folders readable by others?): {probe.stderr.strip()} "
                f"{result.stderr.strip()}"
            )

    def env(self, happy_url: str) -> dict[str, str]:
        """The environment a box session gets (sshd ``SetEnv``)."""
        return {
            "PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(self.lib_dir),
            "HAPPY_SERVER_URL": happy_url,
        }


def _run_as_nobody(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        return subprocess.run(
            command,
            env=env,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
    sudo = ["sudo", "-n", "-u", f"#{NOBODY}", "-g", f"#{NOBODY}", "--", "env", "-i"]
    return subprocess.run(
        [*sudo, *(f"{k}={v}" for k, v in env.items()), *command],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
