"""One SSH connection to a board, through paramiko: the user's ``~/.ssh/config``, agent and keys,
host keys checked against ``known_hosts`` (an unknown or changed key is refused, never added),
commands run and files copied over SFTP. ``board`` builds the worker runs on top of it."""

from __future__ import annotations

import getpass
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import MobiledeployError

TIMEOUT = 20.0  # seconds to connect, and between keep-alives before a silent board counts as gone
KEEPALIVE = 5  # seconds between keep-alive messages while a command runs
MAX_REPLY = 1 << 20  # bytes of a command's stdout/stderr read back (a worker writes little)
MAX_FETCH = 2 << 30  # bytes of a file fetched from the board (a batch's outputs, an optimized graph)
HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$|^\[[0-9A-Fa-f:.]{2,45}\]$")  # a name, an address, [IPv6]
USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$")


class BoardUnreachable(MobiledeployError):
    """No connection to the board (refused, timed out, host key or keys refused)."""


@dataclass(frozen=True)
class Address:
    """``ssh://[user@]host[:port]``, as the user typed it; ``~/.ssh/config`` fills in the rest."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def label(self) -> str:
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}{f':{self.port}' if self.port else ''}"


def parse_address(device: str) -> Address:
    """The address in an ``ssh://[user@]host[:port]`` device; anything else is refused in one line."""
    expected = "expected ssh://[user@]host[:port], e.g. ssh://pi@raspberrypi.local or ssh://ubuntu@10.0.0.7:2222"
    try:
        parts = urlsplit(device)
        port = parts.port
    except ValueError as exc:
        raise MobiledeployError(f"'{device}': {exc}; {expected}") from None
    if parts.scheme != "ssh" or parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise MobiledeployError(f"'{device}': not an SSH address; {expected}")
    host = parts.hostname or ""
    if not HOST.match(host) and not HOST.match(f"[{host}]"):
        raise MobiledeployError(f"'{device}': '{host}' is not a host name; {expected}")
    if parts.username is not None and not USER.match(parts.username):
        raise MobiledeployError(f"'{device}': '{parts.username}' is not a user name; {expected}")
    if port == 0:
        raise MobiledeployError(f"'{device}': port 0; {expected}")
    return Address(host, parts.username, port)


class Connection:
    """An open SSH connection (a context manager): ``run`` a command, ``put`` and ``get`` files."""

    def __init__(self, address: Address):
        import paramiko

        self.address = address
        config = _config_for(address.host)
        hostname = config.get("hostname", address.host)
        try:
            port = address.port or int(config.get("port", 22))
        except ValueError:
            raise BoardUnreachable(f"{address.label}: ~/.ssh/config gives Port '{config.get('port')}'; expected a "
                                   "number") from None
        user = address.user or config.get("user") or getpass.getuser()
        self.client = paramiko.SSHClient()
        try:
            self.client.load_system_host_keys()  # ~/.ssh/known_hosts
            for extra in config.get("userknownhostsfile", "").split():
                if Path(extra).expanduser().is_file():
                    self.client.load_system_host_keys(str(Path(extra).expanduser()))
        except (OSError, paramiko.SSHException) as exc:
            raise BoardUnreachable(f"{address.label}: cannot read known_hosts ({exc})") from None
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())  # never trust on first use
        try:
            self._connect(hostname, port, user, config)
        except BaseException:
            self.client.close()
            raise
        self.client.get_transport().set_keepalive(KEEPALIVE)
        self._sftp = None

    def _connect(self, hostname: str, port: int, user: str, config: dict) -> None:
        import paramiko

        address = self.address
        try:
            keys = [str(Path(k).expanduser()) for k in config.get("identityfile", [])] or None
            self.client.connect(hostname, port, user, key_filename=keys, timeout=TIMEOUT,
                                banner_timeout=TIMEOUT, auth_timeout=TIMEOUT, allow_agent=True, look_for_keys=True)
        except paramiko.BadHostKeyException:
            raise BoardUnreachable(
                f"{address.label}: the board's host key differs from the one in known_hosts: another machine may "
                f"answer at that address; if the board was reinstalled, check its new key and run: "
                f"ssh-keygen -R '{_known_hosts_name(hostname, port)}'") from None
        except paramiko.AuthenticationException:
            raise BoardUnreachable(f"{address.label}: the board refused {user}'s keys; add your public key to "
                                   "its ~/.ssh/authorized_keys or load the key into ssh-agent") from None
        except paramiko.SSHException as exc:
            if "known_hosts" in str(exc):
                raise BoardUnreachable(
                    f"{address.label}: the board's host key is not in known_hosts; connect once with "
                    f"ssh -p {port} {user}@{hostname}, check the fingerprint, and accept it") from None
            raise BoardUnreachable(f"{address.label}: SSH failed ({str(exc)[:160]})") from None
        except OSError as exc:  # refused, unreachable, timed out
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BoardUnreachable(f"{address.label}: cannot connect to {hostname}:{port} ({reason[:160]}); "
                                   "check that the board is on and sshd runs") from None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of ``command`` in the board's shell. A connection that
        dropped before the command ended raises ``BoardUnreachable``."""
        import paramiko

        try:
            _, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            out = stdout.read(MAX_REPLY).decode("utf-8", "replace")
            err = stderr.read(MAX_REPLY).decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise BoardUnreachable(f"{self.address.label}: the connection dropped ({str(exc)[:120] or 'closed'})") \
                from None
        if status == -1:  # the channel closed without an exit status: the connection went away
            raise BoardUnreachable(f"{self.address.label}: the connection dropped while running a command")
        return status, out, err

    def check(self, command: str, step: str, fix: str, timeout: float | None = None) -> str:
        """``run``, returning stdout; a non-zero exit raises one line naming ``step`` and ``fix``."""
        status, out, err = self.run(command, timeout)
        if status != 0:
            last = ((err.strip() or out.strip()).splitlines() or ["no output"])[-1][:200]
            raise MobiledeployError(f"{self.address.label}: could not {step} (exit {status}: {last}); {fix}")
        return out

    @property
    def sftp(self):
        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except Exception as exc:  # paramiko raises SSHException, EOFError, ... when sftp is off
                raise BoardUnreachable(f"{self.address.label}: the board's SSH server offers no SFTP ({exc}); "
                                       "enable its sftp subsystem") from None
        return self._sftp

    def put(self, local: str | Path, remote: str) -> None:
        """Copy a file to the board."""
        with open(local, "rb") as stream:
            self._upload(stream, remote)

    def put_bytes(self, data: bytes, remote: str) -> None:
        """``put`` for bytes held in memory."""
        import io

        self._upload(io.BytesIO(data), remote)

    def _upload(self, stream, remote: str) -> None:
        """To a temporary name, then renamed: no half-copied file ever has the final name."""
        partial = f"{remote}.partial"
        try:
            self.sftp.putfo(stream, partial)
            self.sftp.posix_rename(partial, remote)
        except (OSError, EOFError) as exc:
            raise BoardUnreachable(f"{self.address.label}: writing {remote} failed ({exc})") from None

    def read_bytes(self, remote: str, limit: int = MAX_REPLY) -> bytes:
        """A small file's bytes (a worker's result); one larger than ``limit`` is refused."""
        try:
            if self.sftp.stat(remote).st_size > limit:
                raise MobiledeployError(f"{self.address.label}: {remote} is over {limit} bytes; expected a small "
                                        "JSON result")
            with self.sftp.open(remote, "rb") as stream:
                return stream.read(limit)
        except (OSError, EOFError) as exc:
            raise BoardUnreachable(f"{self.address.label}: reading {remote} failed ({exc})") from None

    def get(self, remote: str, local: str | Path, limit: int = MAX_FETCH) -> None:
        """Copy a file from the board; one larger than ``limit`` bytes is refused."""
        try:
            size = self.sftp.stat(remote).st_size
            if size > limit:
                raise MobiledeployError(f"{self.address.label}: {remote} is {size} bytes, over the {limit} expected; "
                                        "the board's worker wrote something other than its outputs")
            self.sftp.get(remote, str(local))
        except (OSError, EOFError) as exc:
            raise BoardUnreachable(f"{self.address.label}: fetching {remote} failed ({exc})") from None

    def exists(self, remote: str) -> bool:
        try:
            self.sftp.stat(remote)
            return True
        except FileNotFoundError:
            return False
        except (OSError, EOFError) as exc:
            raise BoardUnreachable(f"{self.address.label}: reading {remote} failed ({exc})") from None


def _config_for(host: str) -> dict:
    """The ``~/.ssh/config`` settings for ``host`` (none when there is no config file)."""
    import paramiko

    path = Path("~/.ssh/config").expanduser()
    if not path.is_file():
        return {}
    try:
        return paramiko.SSHConfig.from_path(str(path)).lookup(host)
    except Exception as exc:  # paramiko's parser raises several types for bad lines
        raise BoardUnreachable(f"{path}: cannot read this SSH config ({str(exc)[:160]}); fix the line it names") \
            from None


def _known_hosts_name(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


def quote(*words: str) -> str:
    """A command line for the board's POSIX shell, each word quoted."""
    return " ".join(shlex.quote(str(word)) for word in words)
