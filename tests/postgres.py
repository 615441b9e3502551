"""A throw-away PostgreSQL server for tests: `initdb` + `pg_ctl` in a temporary folder.

The server listens on 127.0.0.1 at a free port with trust auth, keeps its Unix socket in its own
temporary folder (never /var/run/postgresql), and runs as the `postgres` system user when the
tests run as root, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
DEBIAN_BINDIRS = "/usr/lib/postgresql"
START_TIMEOUT_S = 60.0


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL installation on this machine; the message says what is missing."""


def find_bindir() -> Path:
    """The folder holding `initdb` and `pg_ctl`: from PATH, else the newest Debian version."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "pg_ctl").exists():
        return Path(initdb).parent
    versions = [p.parent for p in Path(DEBIAN_BINDIRS).glob("*/bin/initdb")
                if (p.parent / "pg_ctl").exists()]
    if not versions:
        raise PostgresUnavailable(
            f"no PostgreSQL binaries (initdb, pg_ctl) on PATH or in {DEBIAN_BINDIRS}/*/bin")
    return max(versions, key=lambda d: [int(n) for n in re.findall(r"\d+", d.parent.name)])


def new_server() -> PostgresServer:
    """An unstarted server; PostgresUnavailable if psycopg or the binaries are missing."""
    try:
        import psycopg  # noqa: F401
    except ImportError as err:
        raise PostgresUnavailable("psycopg is not installed (pip install 'psycopg[binary]')") \
            from err
    return PostgresServer(find_bindir())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as_prefix() -> tuple[list[str], pwd.struct_passwd | None]:
    """Command prefix that drops root to the `postgres` user (empty when not root)."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError as err:
        raise PostgresUnavailable("running as root but there is no `postgres` system user") from err
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--"], account
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                "--init-groups"], account
    raise PostgresUnavailable("running as root but neither runuser nor setpriv is available")


@dataclass
class PostgresServer:
    """One private PostgreSQL cluster; `start()` it, `stop()` it (which deletes its files)."""

    bindir: Path
    user: str = SUPERUSER
    port: int = field(init=False, default=0)
    startup_seconds: float = field(init=False, default=0.0)
    prefix: list[str] = field(init=False, default_factory=list)
    account: pwd.struct_passwd | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.prefix, self.account = _run_as_prefix()
        self.root: Path = Path(tempfile.mkdtemp(prefix="medq-pg-"))
        self.datadir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.socket_dir.mkdir()
        if self.account is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _run(self, program: str, *args: str) -> None:
        command = [*self.prefix, str(self.bindir / program), *args]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C"}, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}):\n{done.stdout}"
                               f"{done.stderr}{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.logfile.exists():
            return ""
        text = self.logfile.read_text(errors="replace").splitlines()[-lines:]
        return "\nserver log:\n" + "\n".join(text)

    def start(self, attempts: int = 3) -> None:
        """initdb, then pg_ctl start on a free port (retried if the port got taken)."""
        started = time.monotonic()
        self._run("initdb", "-D", str(self.datadir), "-U", self.user, "--auth=trust",
                  "--no-sync", "--no-locale", "--encoding=UTF8")
        for attempt in range(attempts):
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            try:
                self._run("pg_ctl", "start", "-w", "-t", str(int(START_TIMEOUT_S)),
                          "-D", str(self.datadir), "-l", str(self.logfile), "-o", options)
                break
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        self.wait_ready()
        self.startup_seconds = time.monotonic() - started

    def wait_ready(self) -> None:
        """Block until a TCP connection succeeds, or raise after START_TIMEOUT_S."""
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with psycopg.connect(self.conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not accept connections on port "
                                       f"{self.port}: {err}{self.log_tail()}") from err
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            if (self.datadir / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.datadir))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL of one database on this server."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new, empty database; returns its name."""
        import psycopg
        from psycopg import sql

        name = f"test_{uuid.uuid4().hex}"
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connections still open to it."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))
