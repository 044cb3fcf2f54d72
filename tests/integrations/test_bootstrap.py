# ruff: noqa: F811 - pytest fixtures imported from tests.support.happy_package
"""Bootstrap with Fabric against real sshd boxes: a bare host (no `happy`, no
HAPPY_SERVER_URL) gets happy-coder from a LOCAL npm package (the `happy` stand-in packed as
`happy-coder`, installed into a temp npm prefix), the URL in its sshd's own SetEnv line, and
a verification; nothing on this machine outside the test dirs is touched."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import BootstrapSettings
from app.errors import HostKeyMismatchError
from app.integrations.bootstrap import (
    BootstrapError,
    bootstrap_host,
    bootstrap_script,
    cloud_init_login_user_data,
    cloud_init_user_data,
    spec_version,
)
from app.integrations.ssh import BoxSession
from tests.support.happy_package import (  # noqa: F401 - fixtures used by name
    bare_box,
    box_settings,
    happy_tarballs,
    npm_prefix,
)
from tests.support.sshd import SUDOERS_DIR, SSHBox


def test_bootstrap_installs_happy_sets_url_verifies_and_second_run_does_nothing(
    bare_box: SSHBox, happy_double: Any, happy_tarballs: dict[str, Path], npm_prefix: Path
) -> None:
    settings = box_settings(bare_box, happy_tarballs["0.13.0"], npm_prefix)
    with BoxSession(bare_box.target()) as session:  # the host as it starts
        before = session.run('command -v happy; echo "url=${HAPPY_SERVER_URL:-}"').output
    assert "happy" not in before.split("url=")[0] and "url=\n" in before + "\n"

    report = bootstrap_host(bare_box.target(), happy_server_url=happy_double.url, settings=settings)

    statuses = {s.name: s.status for s in report.steps}
    assert statuses == {
        "admin": "skipped",
        "nodejs": "skipped",
        "happy": "done",
        "environment": "done",
        "verify": "skipped",
    }
    assert report.verified and report.changed
    assert report.happy_version == "0.13.0"
    assert report.happy_path == f"{npm_prefix}/bin/happy"
    assert report.happy_server_url == happy_double.url
    assert report.node_version and report.node_version.startswith("v")
    # Seen independently: the package is in the temp prefix, the URL in the box's sshd.
    assert (npm_prefix / "lib/node_modules/happy-coder/package.json").exists()
    assert f"HAPPY_SERVER_URL={happy_double.url}" in bare_box.config_path.read_text()
    with BoxSession(bare_box.target()) as session:
        after = session.run('command -v happy; echo "url=$HAPPY_SERVER_URL"; happy daemon status')
    assert f"{npm_prefix}/bin/happy" in after.output
    assert f"url={happy_double.url}" in after.output
    assert "Daemon is not running" in after.output  # the installed stand-in runs
    config_before = bare_box.config_path.stat().st_mtime_ns

    again = bootstrap_host(bare_box.target(), happy_server_url=happy_double.url, settings=settings)

    assert {s.status for s in again.steps} == {"skipped"}
    assert not again.changed and again.verified
    assert bare_box.config_path.stat().st_mtime_ns == config_before


def test_bootstrap_refuses_a_host_whose_key_does_not_match(
    bare_box: SSHBox, happy_double: Any, happy_tarballs: dict[str, Path], npm_prefix: Path
) -> None:
    settings = box_settings(bare_box, happy_tarballs["0.13.0"], npm_prefix)
    pinned = bare_box.target()
    bare_box.regenerate_host_key()
    settings = replace(settings, sshd_reload_command=f"kill -HUP {bare_box.sshd_pid}")

    with pytest.raises(HostKeyMismatchError):
        bootstrap_host(pinned, happy_server_url=happy_double.url, settings=settings)

    assert "Accepted publickey" not in bare_box.sshd_log()  # credentials never offered
    assert not (npm_prefix / "lib").exists()
    assert "HAPPY_SERVER_URL" not in bare_box.config_path.read_text()


def test_bootstrap_refuses_a_login_without_root_or_sudo(
    bare_box: SSHBox, happy_double: Any, happy_tarballs: dict[str, Path], npm_prefix: Path
) -> None:
    (SUDOERS_DIR / bare_box.user).unlink()
    settings = box_settings(bare_box, happy_tarballs["0.13.0"], npm_prefix)

    with pytest.raises(BootstrapError) as caught:
        bootstrap_host(bare_box.target(), happy_server_url=happy_double.url, settings=settings)

    assert "sudo" in caught.value.safe_message
    assert not (npm_prefix / "lib").exists()


def test_bootstrap_verification_fails_when_the_happy_server_is_unreachable(
    bare_box: SSHBox, happy_tarballs: dict[str, Path], npm_prefix: Path
) -> None:
    settings = box_settings(bare_box, happy_tarballs["0.13.0"], npm_prefix)
    with pytest.raises(BootstrapError) as caught:
        bootstrap_host(bare_box.target(), happy_server_url="http://127.0.0.1:9", settings=settings)
    assert "cannot reach the Happy server" in caught.value.safe_message


def test_upgrade_mode_installs_the_wanted_version_only_when_it_differs(
    bare_box: SSHBox, happy_double: Any, happy_tarballs: dict[str, Path], npm_prefix: Path
) -> None:
    settings = box_settings(bare_box, happy_tarballs["0.13.0"], npm_prefix)
    bootstrap_host(bare_box.target(), happy_server_url=happy_double.url, settings=settings)
    newer = replace(settings, happy_coder_package=str(happy_tarballs["0.13.1"]))

    upgraded = bootstrap_host(
        bare_box.target(), happy_server_url=happy_double.url, settings=newer, happy_want="=0.13.1"
    )
    same = bootstrap_host(
        bare_box.target(), happy_server_url=happy_double.url, settings=newer, happy_want="=0.13.1"
    )

    assert upgraded.step("happy").status == "done" and upgraded.happy_version == "0.13.1"  # type: ignore[union-attr]
    assert same.step("happy").status == "skipped"  # type: ignore[union-attr]


def test_spec_version_reads_npm_specs_and_packed_tarballs() -> None:
    assert spec_version("happy-coder@0.13.0") == "0.13.0"
    assert spec_version("/tmp/x/happy-coder-0.13.1.tgz") == "0.13.1"
    assert spec_version("happy-coder") is None
    assert spec_version("happy-coder@latest") is None


def test_cloud_init_user_data_runs_the_same_steps_idempotently(
    happy_tarballs: dict[str, Path], tmp_path: Path
) -> None:
    """The rendered script, run here as root against a temp prefix and a temp env file
    (pam_env format), installs happy-coder and sets the URL; a second run changes nothing."""
    prefix, env_file = tmp_path / "prefix", tmp_path / "environment"
    env_file.write_text('LANG="C.UTF-8"\n')
    settings = BootstrapSettings(
        happy_coder_package=str(happy_tarballs["0.13.0"]),
        npm_prefix=str(prefix),
        node_install_command="false",
        env_method="pam_env",
        env_file=str(env_file),
    )
    user_data = cloud_init_user_data(
        happy_server_url="http://happy.example:3005",
        settings=settings,
        login_user="vibebox",
        authorized_keys=["ssh-ed25519 AAAAC3Nza test"],
    )
    assert user_data.startswith("#cloud-config\n")
    document = yaml.safe_load(user_data)
    assert document["users"][1]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    script = document["write_files"][0]["content"]
    assert script == bootstrap_script(
        happy_server_url="http://happy.example:3005", settings=settings
    )
    assert document["runcmd"] == [[document["write_files"][0]["path"]]]
    (tmp_path / "bootstrap.sh").write_text(script)

    first = subprocess.run(["sh", str(tmp_path / "bootstrap.sh")], capture_output=True, text=True)
    second = subprocess.run(["sh", str(tmp_path / "bootstrap.sh")], capture_output=True, text=True)

    assert first.returncode == 0, first.stderr
    assert (prefix / "bin/happy").exists()
    lines = env_file.read_text().splitlines()
    assert lines[0] == 'LANG="C.UTF-8"'
    assert 'HAPPY_SERVER_URL="http://happy.example:3005"' in lines
    assert any(line.startswith(f'PATH="{prefix}/bin:') for line in lines)
    assert first.stdout.count("status=done") == 2  # happy, environment (node was there)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("status=skipped") == 3 and "status=done" not in second.stdout


def test_cloud_init_login_user_data_makes_only_the_login():
    sudoer = yaml.safe_load(
        cloud_init_login_user_data(login_user="vibe", authorized_keys=["ssh-ed25519 AAAA k"])
    )
    assert sudoer["users"][1]["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert sudoer["users"][1]["ssh_authorized_keys"] == ["ssh-ed25519 AAAA k"]
    assert "runcmd" not in sudoer and "write_files" not in sudoer
    root = yaml.safe_load(cloud_init_login_user_data(authorized_keys=["ssh-ed25519 AAAA k"]))
    assert root == {"disable_root": False, "ssh_authorized_keys": ["ssh-ed25519 AAAA k"]}
