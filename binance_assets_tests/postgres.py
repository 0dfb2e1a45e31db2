"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` + `pg_ctl` in a temporary directory.

The server listens on 127.0.0.1 at a free port and asks TCP clients for a password (scram-sha-256), as a
production server does; its unix socket (in the same directory, trusted) only serves `createdb`.
PostgreSQL refuses to run as root: as root, the server runs through `runuser` as the `postgres` user
(created by Debian's package) or, without one, `nobody`, and that user owns the directory. The
directory is made under the system temp dir, not pytest's `tmp_path`, whose parents only root may enter.

Binaries: `initdb` on PATH, else the newest `/usr/lib/postgresql/<major>/bin` (Debian's packages install
there, off PATH); `.ci/run` installs the package with apt-get where neither exists.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")
_SERVER_USERS = ("postgres", "nobody")
_NO_FSYNC = ("-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off")
"""For tests: the server's data is thrown away, so durability only costs time."""


class PostgresUnavailable(RuntimeError):
    """Neither PostgreSQL binaries nor apt-get to install them: tests that need a server skip."""


@dataclass(frozen=True)
class Postgres:
    """A running server and one database on it, as the DAGSTER_PG_* variables of deploy/dagster.yaml."""

    host: str
    port: int
    user: str
    password: str
    database: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.database,
        }


@dataclass(frozen=True)
class PostgresServer:
    """A server started by `postgres_server`; `create_database` gives each user a fresh database."""

    bin_dir: Path
    socket_dir: Path
    port: int
    password: str
    run_as: tuple[str, ...]

    def create_database(self, name: str) -> Postgres:
        _run([*self.run_as, str(self.bin_dir / "createdb"), "-h", str(self.socket_dir), "-p", str(self.port),
              "-U", "postgres", name])  # fmt: skip
        return Postgres("127.0.0.1", self.port, "postgres", self.password, name)


def find_bin_dir() -> Path:
    """The directory of initdb and pg_ctl. None, and apt-get could install them: FileNotFoundError (a
    machine that should have them, as CI has); no apt-get either: PostgresUnavailable."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    installed = sorted(DEBIAN_BIN_DIRS.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if installed:
        return installed[-1].parent
    if shutil.which("apt-get"):
        raise FileNotFoundError(
            "PostgreSQL is not installed: `apt-get install postgresql` (as .ci/run does) and run again"
        )
    raise PostgresUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found and no apt-get to install them")


@contextmanager
def postgres_server(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """Start a fresh server (fsync off unless asked: tests throw the data away); stop and delete it after."""
    bin_dir = find_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="pg-"))
    password = secrets.token_hex(8)
    try:
        run_as = _run_as(root)
        (root / "pwfile").write_text(password + "\n")
        _run([*run_as, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-E", "UTF8",
              "--no-locale", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
              f"--pwfile={root / 'pwfile'}"])  # fmt: skip
        port = _free_port()
        options = ["-h 127.0.0.1", f"-p {port}", f"-k {root}", *(() if fsync else _NO_FSYNC)]
        _run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"),
              "-w", "-t", "60", "-o", " ".join(options), "start"], log=root / "server.log")  # fmt: skip
        try:
            yield PostgresServer(bin_dir, root, port, password, run_as)
        finally:
            _run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_as(root: Path) -> tuple[str, ...]:
    """The command prefix that runs the server's programs as a user PostgreSQL accepts, owning root."""
    if os.geteuid() != 0:
        return ()
    for name in _SERVER_USERS:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        os.chown(root, user.pw_uid, user.pw_gid)
        return ("runuser", "-u", name, "--")
    raise RuntimeError(f"running as root and none of the users {_SERVER_USERS} exists to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], log: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode:
        server_log = log.read_text() if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr}{server_log}")
