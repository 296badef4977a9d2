"""The real mesh for the tests: auth-svc and quota-svc (the cargo-built debug binaries) on free
ports over a fresh PostgreSQL database, service keys issued by the auth-svc CLI as `just up`
does, the free tier applied as billing-svc would, and the example app under uvicorn.

Settings: `COMMERCE_MESH_BIN_DIR` (default `<repo>/target/debug`), `TEST_DATABASE_URL` (any
database of the server, default `postgres://postgres@127.0.0.1:5432/postgres`). The database is
dropped at the end; the servers' output is printed at the end of a run that failed.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from commerce_mesh._stubs import auth_pb2, auth_pb2_grpc, quota_pb2, quota_pb2_grpc

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "clients" / "python" / "examples"
BIN_DIR = Path(os.environ.get("COMMERCE_MESH_BIN_DIR", REPO / "target" / "debug"))
SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
# A fixed development master key: the test database is thrown away.
MASTER_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
# The free tier the tests run against (what billing-svc's `plans apply` would set); None is
# unlimited.
FREE_TIER: dict[str, int | None] = {"analysis": 3, "report": 2, "export": None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(what: str, ready: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} was not ready within {within} s")
        time.sleep(0.1)


class Process:
    """A child process with its output in a log file; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                args,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.output()}")
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def serving(addr: str) -> bool:
    """Whether the server's `grpc.health.v1` check says SERVING: the servers listen before their
    migrations have run and report SERVING only after. The messages are tiny enough to write by
    hand (an empty request; `status = 1` is the bytes 08 01)."""
    check = _channel(addr).unary_unary("/grpc.health.v1.Health/Check")
    try:
        return bool(check(b"", timeout=1) == b"\x08\x01")
    except grpc.RpcError:
        return False


def binary(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        pytest.exit(
            f"{path} is not built: run `cargo build --locked --bins` (clients/python/run-tests.sh "
            "does) or set COMMERCE_MESH_BIN_DIR",
            returncode=2,
        )
    return str(path)


def psql(sql: str) -> None:
    result = subprocess.run(
        ["psql", SERVER_URL, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.exit(
            f"`{sql}` on {SERVER_URL} failed (the tests need PostgreSQL; `just test` starts it; "
            f"TEST_DATABASE_URL names another server):\n{result.stderr}",
            returncode=2,
        )


@functools.cache
def _channel(addr: str) -> grpc.Channel:
    """One channel per address for the whole run (the test side's synchronous calls)."""
    return grpc.insecure_channel(addr)


@dataclass
class MeshUnderTest:
    auth_addr: str
    quota_addr: str
    app_url: str
    database_url: str
    backend_key: str
    auth: Process
    processes: list[Process]
    # A token the mesh signed with a 60-second life, taken at the start of the run.
    expiring_token: str = ""

    def auth_stub(self) -> auth_pb2_grpc.AuthServiceStub:
        return auth_pb2_grpc.AuthServiceStub(_channel(self.auth_addr))

    def quota_state(self, user_id: str, metric: str) -> quota_pb2.QuotaState:
        """CheckQuota with the backend's key, as the backend itself would."""
        stub = quota_pb2_grpc.QuotaServiceStub(_channel(self.quota_addr))
        response = stub.CheckQuota(
            quota_pb2.CheckQuotaRequest(metric=metric, subject=user_id),
            metadata=[("x-api-key", self.backend_key)],
            timeout=10,
        )
        return response.quota

    def auth_cli(self, *args: str) -> str:
        return auth_cli(self.database_url, *args)


def auth_cli(database_url: str, *args: str) -> str:
    """Runs an auth-svc command (`service-key issue`, `keys rotate`) on the test database."""
    result = subprocess.run(
        [binary("auth-svc"), *args],
        env={**os.environ, "AUTH_DATABASE_URL": database_url, "AUTH_MASTER_KEY": MASTER_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def server_env(prefix: str, port: int, database_url: str) -> dict[str, str]:
    """What every server of the mesh reads: where to listen and which database."""
    return {
        f"{prefix}_LISTEN_ADDR": f"127.0.0.1:{port}",
        f"{prefix}_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        f"{prefix}_DATABASE_URL": database_url,
        "HEALTH_CHECK_INTERVAL_MS": "200",
    }


@pytest.fixture(scope="session")
def mesh() -> Iterator[MeshUnderTest]:
    name = f"commerce_pytest_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    database_url = SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
    logs = Path(tempfile.mkdtemp(prefix="commerce-pytest-"))
    processes: list[Process] = []
    psql(f"CREATE DATABASE {name}")
    try:

        def start(
            name: str, args: list[str], env: dict[str, str], port: int, health: bool = True
        ) -> Process:
            process = Process(name, args, env, logs)
            processes.append(process)
            ready = serving if health else lambda addr: listening(int(addr.rsplit(":", 1)[1]))
            addr = f"127.0.0.1:{port}"
            wait_until(f"{name} on {addr}", lambda: process.alive() and ready(addr))
            return process

        def start_auth(name: str, port: int, **settings: str) -> Process:
            """An auth-svc on the mesh's database and signing keys, its mail (verification links)
            going to its log as under `just up`."""
            env = {
                **server_env("AUTH", port, database_url),
                "AUTH_MASTER_KEY": MASTER_KEY,
                "AUTH_LOG_MAIL": "true",
                **settings,
            }
            return start(name, [binary("auth-svc")], env, port)

        auth_port = free_port()
        # Every test signs up from 127.0.0.1.
        auth = start_auth("auth-svc", auth_port, REGISTRATIONS_PER_CLIENT_HOUR="0")
        auth_addr = f"127.0.0.1:{auth_port}"
        quota_key = auth_cli(database_url, "service-key", "issue", "--service", "quota-svc")
        billing_key = auth_cli(database_url, "service-key", "issue", "--service", "billing-svc")
        backend_key = auth_cli(
            database_url, "service-key", "issue", "--service", "analysis-app", "--scopes",
            "quota:consume,quota:read",
        )  # fmt: skip

        # A second auth-svc on the same database and signing keys, giving tokens of 60 s (the
        # shortest it allows): one taken now has expired by the end of the run, where the test of
        # expired tokens runs (marked `late`).
        short_port = free_port()
        short_lived = start_auth("auth-svc-60s-tokens", short_port, ACCESS_TOKEN_TTL_SECS="60")
        expiring = register_and_log_in(auth_addr)
        expiring_token = (
            auth_pb2_grpc.AuthServiceStub(_channel(f"127.0.0.1:{short_port}"))
            .Login(
                auth_pb2.LoginRequest(
                    username_or_email=expiring.username, password=expiring.password
                ),
                timeout=30,
            )
            .access_token
        )
        short_lived.stop()

        quota_port = free_port()
        start(
            "quota-svc",
            [binary("quota-svc")],
            {
                **server_env("QUOTA", quota_port, database_url),
                "AUTH_URL": f"http://{auth_addr}",
                "QUOTA_SERVICE_API_KEY": quota_key,
            },
            quota_port,
        )
        quota_addr = f"127.0.0.1:{quota_port}"
        # The free tier, with a service key (billing-svc's job in production).
        limits = [
            quota_pb2.MetricLimit(metric=m, limit=n or 0, unlimited=n is None)
            for m, n in FREE_TIER.items()
        ]
        quota_pb2_grpc.QuotaServiceStub(_channel(quota_addr)).ApplyDefaultEntitlements(
            quota_pb2.ApplyDefaultEntitlementsRequest(limits=limits, version=1),
            metadata=[("x-api-key", billing_key)],
            timeout=30,
            wait_for_ready=True,
        )

        app_port = free_port()
        start(
            "analysis-app",
            [
                sys.executable, "-m", "uvicorn", "analysis_app:app", "--app-dir", str(EXAMPLES),
                "--host", "127.0.0.1", "--port", str(app_port), "--log-level", "warning",
            ],
            {
                "QUOTA_ADDR": quota_addr,
                "AUTH_ADDR": auth_addr,
                "QUOTA_API_KEY": backend_key,
                "EXAMPLE_FAILURES": "1",
                # Long, so a token of a new key can only verify by the refetch on an unknown kid.
                "JWKS_REFRESH_SECS": "600",
            },
            app_port,
            health=False,
        )  # fmt: skip
        yield MeshUnderTest(
            auth_addr,
            quota_addr,
            f"http://127.0.0.1:{app_port}",
            database_url,
            backend_key,
            auth,
            processes,
            expiring_token,
        )
    finally:
        for process in reversed(processes):
            process.stop()
            # Shown at the end of the run if anything failed (pytest_terminal_summary).
            _OUTPUTS[process.name] = process.output()
        shutil.rmtree(logs, ignore_errors=True)
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_OUTPUTS: dict[str, str] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `late` run last (stable order otherwise): they wait for something that
    happens in time, such as a token expiring, while the others run."""
    items.sort(key=lambda item: item.get_closest_marker("late") is not None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (terminalreporter.stats.get("failed") or terminalreporter.stats.get("error")):
        return
    for name, output in _OUTPUTS.items():
        terminalreporter.write_sep("-", f"output of {name}")
        terminalreporter.write_line(output[-20000:])


@dataclass
class User:
    user_id: str
    username: str
    email: str
    password: str
    token: str


def sign_up(mesh: MeshUnderTest) -> User:
    """A new account, signed in (through auth-svc's gRPC API, as a browser does via the edge)."""
    return register_and_log_in(mesh.auth_addr)


def register_and_log_in(auth_addr: str) -> User:
    username = f"u{uuid.uuid4().hex[:12]}"
    email = f"{username}@example.org"
    password = f"correct horse battery {uuid.uuid4().hex}"
    auth = auth_pb2_grpc.AuthServiceStub(_channel(auth_addr))
    registered = auth.Register(
        auth_pb2.RegisterRequest(email=email, username=username, password=password), timeout=30
    )
    login = auth.Login(
        auth_pb2.LoginRequest(username_or_email=username, password=password), timeout=30
    )
    assert login.user.user_id == registered.user.user_id
    return User(registered.user.user_id, username, email, password, login.access_token)


def verify_email(mesh: MeshUnderTest, user: User) -> None:
    """Follows the verification link auth-svc logged for the user (no SMTP in tests)."""
    pattern = re.compile(r"verify-email\?token=([A-Za-z0-9_-]+)")

    def link() -> str | None:
        for line in reversed(mesh.auth.output().splitlines()):
            found = pattern.search(line)
            if user.email in line and found:
                return found.group(1)
        return None

    wait_until(f"the verification mail to {user.email}", lambda: link() is not None, within=10)
    mesh.auth_stub().VerifyEmail(auth_pb2.VerifyEmailRequest(token=link() or ""), timeout=10)


@pytest.fixture
def user(mesh: MeshUnderTest) -> User:
    return sign_up(mesh)


@pytest.fixture
def app(mesh: MeshUnderTest) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.app_url, timeout=30) as client:
        yield client
