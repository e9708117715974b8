"""Throw-away servers for the tests: a PostgreSQL cluster and a two-node Ray cluster, both on loopback, in
temp folders of their own, torn down by killing only the processes they started.

`.ci/run` starts the PostgreSQL server once (``python tests/servers.py postgres-start DIR`` prints its URL)
and hands the URL to pytest in ``CRAM_TEST_POSTGRES_URL``; without it the conftest fixture starts one.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
"Debian's layout, one folder per major version"
PG_USER = "postgres"
"initdb refuses to run as root; as root the cluster belongs to this user (Debian's package creates it)"


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- PostgreSQL


def pg_bin(name: str) -> str:
    def major(folder: Path) -> int:
        return int(folder.parent.name) if folder.parent.name.isdigit() else 0

    for folder in sorted(Path("/").glob(PG_BIN_GLOB.lstrip("/")), key=major, reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise ServerError(f"PostgreSQL's {name} not found in {PG_BIN_GLOB} or on PATH (apt-get install -y postgresql)")
    return found


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServerError(f"running as root and there is no {PG_USER!r} user for initdb") from None
    return ["runuser", "-u", PG_USER, "--", *cmd]


def postgres_start(folder: str | Path | None = None) -> tuple[str, Path]:
    """initdb + pg_ctl start in `folder` (a new temp folder by default): trust auth, 127.0.0.1 only, a free port.
    Returns (URL of the `postgres` database, folder)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="cram-pg-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, user=PG_USER)
    port = free_port()
    run = lambda cmd: subprocess.run(_as_owner(cmd), capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
    if r.returncode != 0:
        raise ServerError(f"initdb failed: {(r.stderr or r.stdout).strip()}")
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
    r = run([pg_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "start"])
    if r.returncode != 0:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        raise ServerError(f"pg_ctl start failed: {(r.stderr or r.stdout).strip()} {log[-500:]}")
    (folder / "port").write_text(str(port))
    return f"postgresql://postgres@127.0.0.1:{port}/postgres", folder


def postgres_stop(folder: str | Path) -> None:
    folder = Path(folder)
    if (folder / "data" / "postmaster.pid").exists():
        subprocess.run(_as_owner([pg_bin("pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
    shutil.rmtree(folder, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, sql: str) -> list:
    """Rows of one SQL query on any store URL, from a connection of its own (the store's writer is another
    process in the tests that use it)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(text(sql)).fetchall()
    finally:
        engine.dispose()


def trial_counts(url: str) -> dict[str, int]:
    """{status: trials}, empty while the store has no tables yet."""
    from sqlalchemy.exc import DBAPIError

    try:
        return dict(query(url, "select status, count(*) from cram_trials group by status"))
    except DBAPIError:
        return {}


# ---------------------------------------------------------------- Ray


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


@dataclass
class RayNode:
    """One `ray start --block` in a session of its own: every process of the node (raylet, workers, and
    on the head the GCS) is in that session, so killing the session kills this node and nothing else."""

    name: str
    proc: subprocess.Popen

    def kill(self) -> None:
        for pid in _session_pids(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class RayCluster:
    address: str
    folder: Path
    head: RayNode
    worker: RayNode

    def node_ids(self) -> dict[str, str]:
        """{'head' | 'worker': Ray node id}, from the GCS (a short-lived driver, so call it before a sweep)."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                "print(json.dumps({('worker' if 'cram_worker' in n['Resources'] else 'head'): n['NodeID'] "
                "for n in ray.nodes() if n['Alive']}))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env=ray_env())
        if out.returncode != 0:
            raise ServerError(f"cannot read the cluster's nodes: {out.stderr.strip()[-500:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        self.worker.kill()
        self.head.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _ray_cli() -> str:
    """The `ray` script of the Python running the tests (pip puts it beside the interpreter)."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        raise ServerError("the `ray` command is not installed (pip install 'ray[tune]')")
    return found


def ray_env() -> dict[str, str]:
    # a local Ray started in this process (the ray_local fixture) sets "no cluster" mode in os.environ, under
    # which `ray start --address` refuses to join; this is a real multi-node cluster, on loopback, ours
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def ray_cluster(*, head_cpus: int = 1, worker_cpus: int = 1, timeout_s: float = 120) -> RayCluster:
    """A head and a second node (custom resource ``cram_worker``), each with its own raylet and temp folder."""
    folder = Path(tempfile.mkdtemp(prefix="crc-"))  # short: Ray's socket paths must stay under 107 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]

    def start(name: str, args: list[str]) -> RayNode:
        log = (folder / f"{name}.log").open("w")
        proc = subprocess.Popen([_ray_cli(), "start", *common, *args, f"--temp-dir={folder / name}"], env=ray_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return RayNode(name, proc)

    head = start("head", ["--head", f"--port={port}", f"--num-cpus={head_cpus}", "--include-dashboard=false"])
    worker = None
    try:
        _wait_for_port(port, timeout_s, head)
        worker = start("worker", [f"--address={address}", f"--num-cpus={worker_cpus}",
                                  "--resources=" + json.dumps({"cram_worker": 1})])
        cluster = RayCluster(address, folder, head, worker)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if len(cluster.node_ids()) == 2:
                    return cluster
            except ServerError:
                pass
            if time.monotonic() > deadline or head.proc.poll() is not None or worker.proc.poll() is not None:
                logs = " | ".join((folder / f"{n}.log").read_text()[-300:] for n in ("head", "worker"))
                raise ServerError(f"the two-node Ray cluster did not come up: {logs}")
            time.sleep(1)
    except BaseException:
        if worker is not None:
            worker.kill()
        head.kill()
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _wait_for_port(port: int, timeout_s: float, node: RayNode) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and node.proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise ServerError(f"Ray head did not listen on port {port}")


if __name__ == "__main__":  # for .ci/run: start / stop one PostgreSQL server
    usage = "usage: python tests/servers.py postgres-start DIR | postgres-stop DIR"
    if len(sys.argv) != 3 or sys.argv[1] not in ("postgres-start", "postgres-stop"):
        print(usage, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "postgres-start":
        try:
            print(postgres_start(sys.argv[2])[0])
        except ServerError as e:
            print(f"servers: error: {e}", file=sys.stderr)
            sys.exit(1)
    else:
        postgres_stop(sys.argv[2])
