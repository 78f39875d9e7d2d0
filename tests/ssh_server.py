"""A real OpenSSH server on 127.0.0.1 for the board tests: throwaway host and client keys, a
free port, its own cache folder on the "board" (this machine), and a HOME whose ~/.ssh holds
the client key and known_hosts, as a user's would."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

SSHD = next((p for p in ("/usr/sbin/sshd", shutil.which("sshd") or "") if p and Path(p).is_file()), None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().split()[1]


@contextmanager
def ssh_server(folder: Path):
    """(the device string, the server's process, the board's cache folder); HOME points at a
    folder whose ~/.ssh has the client key and the server's host key, while it runs."""
    if SSHD is None or shutil.which("ssh-keygen") is None:
        pytest.skip("no OpenSSH server here (apt-get install openssh-server); .ci/run installs it")
    folder.mkdir(parents=True, exist_ok=True)
    home, cache = folder / "home", folder / "board-cache"
    (home / ".ssh").mkdir(parents=True)
    host_key = _keygen(folder / "host_key")
    _keygen(home / ".ssh" / "id_ed25519")
    shutil.copy(home / ".ssh" / "id_ed25519.pub", folder / "authorized_keys")
    port = _free_port()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} ssh-ed25519 {host_key}\n")
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}", "UsePAM no",
        "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp",
        # SHLVL=1: the board's bash starts at shell level 2 and so does not read this machine's ~/.bashrc
        # (bash reads it for a command sshd runs only at level 1). Root's here runs `pyenv rehash`, which
        # waits 60 s for a lock that a rehash killed with a test's process tree leaves behind.
        f"SetEnv SHLVL=1 MOBILEDEPLOY_CACHE={cache}", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation folder
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None:
                pytest.fail(f"sshd did not start: {server.stderr.read()}")
            time.sleep(0.1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HOME", str(home))
            yield f"ssh://{_user()}@127.0.0.1:{port}", server, cache
    finally:
        kill_tree(server.pid)
        server.wait(timeout=10)


def _user() -> str:
    import getpass

    return getpass.getuser()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (its children, theirs, ...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_tree(pid: int) -> None:
    """Kill ``pid`` and everything below it (sshd, its sessions and what they run)."""
    import signal

    for process in [*descendants(pid), pid]:
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass
