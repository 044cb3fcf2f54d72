"""The `happy` stand-in as a local npm package `happy-coder`, and fixtures for bootstrapping
bare sshd boxes with it (a temp npm prefix; the box's own sshd_config as the env target)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import BootstrapSettings
from tests.support.sshd import BoxFleet, SSHBox


def pack_happy_coder(fleet: BoxFleet, dest: Path, version: str) -> Path:
    """The `happy` stand-in as an npm package `happy-coder` (bin: happy), `npm pack`ed."""
    package = dest / f"pkg-{version}"
    package.mkdir(parents=True)
    shutil.copy2(fleet.runtime.bin_dir / "happy", package / "happy")
    (package / "package.json").write_text(
        json.dumps({"name": "happy-coder", "version": version, "bin": {"happy": "happy"}}, indent=2)
    )
    out = subprocess.run(
        ["npm", "pack", "--pack-destination", str(dest), "--silent"],
        cwd=package,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(dest), "npm_config_cache": str(dest / "c")},
    )
    tarball = dest / out.stdout.strip().splitlines()[-1]
    assert tarball.exists(), out
    return tarball


@pytest.fixture(scope="session")
def happy_tarballs(
    box_fleet: BoxFleet, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    dest = tmp_path_factory.mktemp("happy-coder-pkg")
    return {v: pack_happy_coder(box_fleet, dest, v) for v in ("0.13.0", "0.13.1")}


@pytest.fixture
def npm_prefix(box_fleet: BoxFleet) -> Iterator[Path]:
    """A temp npm prefix the box users can read (the host's global npm is never used)."""
    prefix = box_fleet.directory / f"npm-{secrets.token_hex(4)}"
    prefix.mkdir(mode=0o755)
    prefix.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture
def bare_box(box_fleet: BoxFleet) -> Iterator[SSHBox]:
    box = box_fleet.new_box(bare=True)
    yield box
    box_fleet.remove(box)


def box_settings(box: SSHBox, tarball: Path, prefix: Path) -> BootstrapSettings:
    """Bootstrap settings that write only into this box's own files."""
    return BootstrapSettings(
        happy_coder_package=str(tarball),
        npm_prefix=str(prefix),
        node_install_command="echo node must not be installed here >&2; false",
        env_method="sshd_setenv",
        env_file=str(box.config_path),
        sshd_reload_command=f"kill -HUP {box.sshd_pid}",
        install_timeout_seconds=180,
    )
