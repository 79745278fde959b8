"""The project's Prefect server on PostgreSQL: a throwaway cluster, a tiny finetune-gpt2 run, the rows in the database.

Debian's `postgresql` is installed with apt-get when `initdb`/`pg_ctl` are missing. The cluster lives
in a temp folder, listens on 127.0.0.1 on a free port (its Unix socket in the same folder), trusts
local connections, and is stopped at the end. As root, initdb and pg_ctl run as the `postgres`
system user (initdb refuses root). The how-to for people is docs/POSTGRES.md.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mftasks.data import demo_corpus

from conftest import finetune_gpt2_completes, free_port, running_stack

REPO = Path(__file__).resolve().parents[1]
DB = "prefect"
pytestmark = pytest.mark.slow


def _pg_bin() -> Path:
    """Folder of the newest installed PostgreSQL's programs; apt-get installs Debian's postgresql when none is."""
    def newest() -> Path | None:
        found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
                 if os.access(Path(p).parent / "pg_ctl", os.X_OK)]
        return max(found, key=lambda p: int(p.parent.name), default=None)

    if (found := newest()) is not None:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (sudo + ["apt-get", "update"], sudo + ["apt-get", "install", "-y", "--no-install-recommends",
                                                      "postgresql"]):
        r = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
        if r.returncode != 0:
            pytest.fail(f"PostgreSQL is missing and `{' '.join(argv)}` failed (exit {r.returncode}):\n"
                        f"{(r.stdout + r.stderr)[-2000:]}")
    if (found := newest()) is None:
        pytest.fail("apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb is there")
    return found


@dataclass
class Cluster:
    bin: Path
    root: Path
    port: int
    user: str | None
    """System user that owns the cluster when we are root (initdb refuses root); None: ourselves."""

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{DB}"

    def as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else list(argv)

    def run(self, argv: list[str], timeout: float = 120) -> str:
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=self.root,
                           timeout=timeout)
        if r.returncode != 0:
            log = self.root / "postgres.log"
            raise AssertionError(f"`{' '.join(argv)}` failed (exit {r.returncode}):\n{r.stdout}{r.stderr}"
                                 + (f"\nserver log:\n{log.read_text()[-2000:]}" if log.exists() else ""))
        return r.stdout

    def psql(self, sql: str) -> str:
        """One value (or rows, '|'-separated) from the database, over TCP as the `postgres` role."""
        return self.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                         "-d", DB, "-X", "-v", "ON_ERROR_STOP=1", "-tAc", sql]).strip()


@contextmanager
def _cluster():
    pg = _pg_bin()
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        try:
            pwd.getpwnam(user)
        except KeyError:  # Debian's package creates it; make it ourselves if someone removed it
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                           check=True, capture_output=True)
    root = Path(tempfile.mkdtemp(prefix="mftasks-pg-"))  # not under pytest's 0700 tmp: the owner must reach it
    if user:
        shutil.chown(root, user=user)
    cluster = Cluster(bin=pg, root=root, port=free_port(), user=user)
    started = False
    try:
        cluster.run(cluster.as_owner(str(pg / "initdb"), "-D", str(cluster.data), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8", "--no-sync"))
        cluster.run(cluster.as_owner(str(pg / "pg_ctl"), "-D", str(cluster.data), "-l", str(root / "postgres.log"),
                                     "-w", "-t", "60", "-o", f"-h 127.0.0.1 -p {cluster.port} -k {root}", "start"))
        started = True
        cluster.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", DB])
        yield cluster
    finally:
        if started:
            subprocess.run(cluster.as_owner(str(pg / "pg_ctl"), "-D", str(cluster.data), "-m", "fast", "-w",
                                            "-t", "60", "stop"), capture_output=True, cwd=root, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_finetune_run_is_stored_in_postgres(tmp_path):
    rel = Path("build") / f"pg-{uuid.uuid4().hex[:8]}"  # deployment parameters are project-relative
    home = tmp_path / "prefect-home"
    with _cluster() as pg:
        try:  # Stack.env() passes PREFECT_API_DATABASE_CONNECTION_URL on to the server
            with running_stack(home, PREFECT_API_DATABASE_CONNECTION_URL=pg.url) as stack:
                demo_corpus.build(REPO / rel / "corpus", max_bytes=150_000, qa_pairs=2500, checks=8)
                run = finetune_gpt2_completes(stack, rel, timeout=600, predict_count=1)
        finally:
            shutil.rmtree(REPO / rel, ignore_errors=True)

        rid = run["id"]
        assert pg.psql(f"SELECT count(*) FROM flow_run WHERE id = '{rid}'") == "1"
        assert pg.psql(f"SELECT state_type FROM flow_run WHERE id = '{rid}'") == "COMPLETED"
        assert pg.psql("SELECT d.name FROM deployment d JOIN flow_run r ON r.deployment_id = d.id "
                       f"WHERE r.id = '{rid}'") == "finetune-gpt2"
        keys = set(pg.psql(f"SELECT key FROM artifact WHERE flow_run_id = '{rid}' AND key IS NOT NULL").split())
        assert {"eval-metrics", "loss-curve", "lineage", "ranks-train"} <= keys, keys
        assert int(pg.psql(f"SELECT count(*) FROM log WHERE flow_run_id = '{rid}' AND message LIKE '[rank 0]%'")) > 0
        assert not (home / "prefect.db").exists(), "the server wrote a SQLite database instead of using PostgreSQL"
