"""A real PostgreSQL server on loopback for the tests that share a study (started and stopped here).

Uses the machine's `initdb`/`postgres` binaries. PostgreSQL refuses to run as root, so as
root the server runs as the unprivileged `nobody` user (through `runuser`), in a folder it owns.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator


def _binary(name: str) -> str | None:
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian's layout, newest last
    return shutil.which(name) or (versions[-1] if versions else None)


def unavailable_reason() -> str | None:
    """Why no server can be started here, or None."""
    if not (_binary("initdb") and _binary("postgres")):
        return "no PostgreSQL server binaries (initdb, postgres) on this machine"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'compressor[postgres]')"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser: PostgreSQL refuses to start as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a SQLAlchemy URL of a fresh database on a server that stops when the block ends."""
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="compressor-pg-"))
    data = base / "data"
    if as_user:
        base.chmod(0o755)
        shutil.chown(base, "nobody")
    port = _free_port()
    proc = None
    try:
        subprocess.run([*as_user, _binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        proc = subprocess.Popen([*as_user, _binary("postgres"), "-D", str(data), "-h", "127.0.0.1",
                                 "-p", str(port), "-k", str(base), "-c", "fsync=off", "-c", "max_connections=100"],
                                stdout=subprocess.DEVNULL, stderr=open(base / "server.log", "wb"))
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"  # the form users type
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {(base / 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)
