"""What the benchmarks share: their environment, their own services, and their worker.

Each benchmark owns a PostgreSQL database (dropped and recreated at start), a Redis database and
a ``var/`` folder, and runs one prefork worker with ``--concurrency 1`` against them
(``tests/support/worker.py``'s WorkerProcess), so numbers from different benchmarks compare.

The servers come from the environment, as ``make run`` and ``make test`` take them:
``DATABASE_URL`` (a PostgreSQL URL) and ``CELERY_BROKER_URL`` (a Redis URL) name the server,
its user and password; the database name and Redis db number in them are replaced by the
benchmark's own (a benchmark drops its database: it never touches the one you named). Unset,
they are ``postgres://postgres@127.0.0.1:5432/`` and ``redis://127.0.0.1:6379/``.

``CountingProxy`` counts the statements, commands and round trips a worker sends to PostgreSQL
or Redis (the benchmarks run it in a separate, untimed run).

Nothing here imports Django models at import time: a worker imports a benchmark module (for its
kinds) and, through it, this one.
"""

import os
import selectors
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/"
# Read once, at import: configure_environment() later sets both to a benchmark's own URLs (on
# the same servers), for this process and the worker it starts.
_DATABASE_SERVER = urlsplit(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
_BROKER_SERVER = urlsplit(os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL)


def database_url(name):
    """The URL of the benchmark's database ``name`` on the PostgreSQL server of DATABASE_URL."""
    if _DATABASE_SERVER.scheme not in ("postgres", "postgresql", "pgsql"):
        sys.exit(f"the benchmarks need PostgreSQL: DATABASE_URL is {os.environ.get('DATABASE_URL')!r} "
                 f"(unset it for {DEFAULT_DATABASE_URL})")
    return urlunsplit(_DATABASE_SERVER._replace(path=f"/{name}", fragment=""))


MAINTENANCE_URL = database_url("postgres")  # where databases are dropped and created


def broker_url(db):
    """The URL of Redis db ``db`` on the Redis server of CELERY_BROKER_URL."""
    if _BROKER_SERVER.scheme not in ("redis", "rediss"):
        sys.exit(f"the benchmarks need Redis: CELERY_BROKER_URL is {os.environ.get('CELERY_BROKER_URL')!r} "
                 f"(unset it for {DEFAULT_BROKER_URL})")
    return urlunsplit(_BROKER_SERVER._replace(path=f"/{db}", fragment=""))


def server_label(url):
    """``host:port/name`` of a database or broker URL, for the benchmarks' first line."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or ''}{parts.path}"


def with_address(url, host, port):
    """``url`` with another host and port (the same user, password, database and options)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def configure_environment(*, database_url, broker_url, var_dir, kind_modules=""):
    """The environment of this process and of the worker; set before Django reads settings.

    dev settings, as the project runs them, but with DEBUG off (as in production) so neither
    process records every query it runs. The worker inherits all of it, ``TAP_VAR_DIR`` too, so
    it sees the same files (e.g. the CSV folder, ``$TAP_VAR_DIR/csv``).
    """
    os.environ.update(
        DJANGO_SETTINGS_MODULE="tapproject.settings.dev",
        DEBUG="false",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        TAP_KIND_MODULES=kind_modules,
        TAP_VAR_DIR=str(var_dir),
        PYTHONUNBUFFERED="1",
    )


def reset_database(name):
    """A fresh database ``name``: no leftover rows from an earlier run."""
    import psycopg

    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def reset_broker(url, *, queue=None):
    """No leftover messages: flush the whole Redis db, or only ``queue``'s keys in it.

    ``queue`` is for a Redis db that other sessions use for other queues (a test slot): only
    this queue's lists (with their priority variants), its binding and its unacknowledged
    messages are removed.
    """
    import json

    import redis

    client = redis.Redis.from_url(url)
    if queue is None:
        client.flushdb()
        return
    names = [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
    names += [key for key in client.scan_iter(match=f"{queue}\x06\x16*")]  # priority lists
    client.delete(*names)
    for tag, payload in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(payload)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


def setup_django():
    """Django and the Celery app, configured from the environment; the database migrated."""
    import django

    django.setup()
    from django.core.management import call_command

    import tapproject  # noqa: F401  (the Celery app, configured from the settings)

    call_command("migrate", verbosity=0)


def make_worker(log_path, *, name="bench", env=None, queues=None):
    """The benchmarks' worker: one prefork pool process (``--concurrency 1``); a fresh log.

    ``env``: its environment (default: this process's, as ``configure_environment`` set it);
    ``queues``: the queues it consumes (default: the default queue)."""
    from tests.support.worker import WorkerProcess

    worker = WorkerProcess(dict(os.environ if env is None else env), log_path, concurrency=1,
                           pool="prefork", name=name, queues=queues)
    worker.log_path.unlink(missing_ok=True)
    return worker


def interleaved(sides, rounds, label, *, per=1.0, unit="s"):
    """Each side once per round, the order flipped every round (ABC, CBA, …) so drift weighs on
    all of them; a line per round. ``sides``: name → callable() → (seconds, extra or None).

    Returns ({name: [seconds ÷ ``per`` (in ``unit``), one a round]}, {name: the last extra that
    was not None}).
    """
    samples = {side: [] for side in sides}
    extras = {}
    for round_ in range(rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        line = []
        for side in order:
            seconds, extra = sides[side]()
            samples[side].append(seconds / per)
            if extra is not None:
                extras[side] = extra
            line.append(f"{side} {seconds / per:.3f}")
        print(f"  {label}, round {round_ + 1}/{rounds}: {', '.join(line)} {unit}", flush=True)
    return samples, extras


class Verdicts(list):
    """A report's PASS / MISS lines: ``verdicts(ok, what)`` adds one; ``show()`` prints them all."""

    def __call__(self, ok, what):
        self.append(f"{'PASS' if ok else 'MISS'}  {what}")

    def show(self):
        print()
        print("\n".join(self))


@contextmanager
def running(worker):
    """Start ``worker``, wait until it has run a task end to end, kill it at the end.

    Killed, not stopped warm: every benchmark has waited for its last task by then, and a warm
    shutdown takes ~3 s, which counts in ``make bench-smoke``'s minute. A worker of its own
    queues (``worker.queues``) never gets the ping on the default queue: it is ready once its log
    says so, and its first task then proves it end to end."""
    worker.start()
    try:
        worker.wait_started() if worker.queues else worker.wait_ready()
        yield worker
    finally:
        worker.kill()


# --- counting what a client sends -------------------------------------------------------------


class _PostgresCounter:
    """Counts the statements of PostgreSQL's frontend protocol: simple ``Query`` messages and
    extended-protocol ``Execute`` messages (so ``BEGIN``, ``COMMIT`` and a ``SELECT 1`` health
    check count as one each). It answers an SSL or GSS encryption request itself with "no", so
    the stream stays readable (the client then goes on in plain text, as ``sslmode=prefer`` does)."""

    REQUESTS = (80877103, 80877104)  # SSLRequest, GSSENCRequest: untyped, before the startup message

    def __init__(self):
        self.buffer = b""
        self.started = False

    def feed(self, data):
        """(statements in ``data``, bytes to answer the client with, bytes to pass on)."""
        self.buffer += data
        statements, answer, passed = 0, b"", b""
        while True:
            if not self.started:  # untyped: int32 length, int32 code
                if len(self.buffer) < 8 or len(self.buffer) < int.from_bytes(self.buffer[:4], "big"):
                    break
                length = int.from_bytes(self.buffer[:4], "big")
                message, self.buffer = self.buffer[:length], self.buffer[length:]
                if int.from_bytes(message[4:8], "big") in self.REQUESTS:
                    answer += b"N"
                else:
                    self.started = True
                    passed += message
                continue
            if len(self.buffer) < 5:
                break
            length = 1 + int.from_bytes(self.buffer[1:5], "big")
            if len(self.buffer) < length:
                break
            message, self.buffer = self.buffer[:length], self.buffer[length:]
            statements += message[:1] in (b"Q", b"E")
            passed += message
        return statements, answer, passed


class _RedisCounter:
    """Counts the commands in a client's RESP stream (arrays of bulk strings, as redis-py sends;
    a pipeline or a MULTI block counts each of its commands)."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        self.buffer += data
        commands = 0
        while (end := self._command_end()) is not None:
            self.buffer = self.buffer[end:]
            commands += 1
        return commands, b"", data

    def _command_end(self):
        buffer = self.buffer
        line = buffer.find(b"\r\n")
        if line < 0:
            return None
        if buffer[:1] != b"*":  # an inline command: one line
            return line + 2
        position = line + 2
        for _ in range(int(buffer[1:line])):
            line = buffer.find(b"\r\n", position)
            if line < 0:
                return None
            position = line + 2 + int(buffer[position + 1:line]) + 2
            if position > len(buffer):
                return None
        return position


class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of one PostgreSQL or Redis server, in a thread.

    For everything its clients send: ``commands`` (PostgreSQL statements or Redis commands) and
    ``round_trips`` (turns: each time a client sends after the server last spoke on that
    connection, i.e. the requests a client had to wait for an answer to; a pipeline is one).
    Used in untimed runs only: it adds a hop and a Python thread to every request.
    """

    def __init__(self, url, protocol):
        parts = urlsplit(url)
        self.target = (parts.hostname, parts.port or {"postgres": 5432, "redis": 6379}[protocol])
        self.counter = {"postgres": _PostgresCounter, "redis": _RedisCounter}[protocol]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = with_address(url, "127.0.0.1", self.listener.getsockname()[1])
        self.commands = self.round_trips = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"proxy-{protocol}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.listener.close()

    def counts(self):
        with self._lock:
            return self.commands, self.round_trips

    def _loop(self):
        selector = selectors.DefaultSelector()
        self.listener.setblocking(False)
        selector.register(self.listener, selectors.EVENT_READ)
        pairs = {}  # socket: (the other socket, parser or None for the server side, state)
        while not self._stop.is_set():
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    try:
                        server = socket.create_connection(self.target)
                    except OSError:  # the server is away: the client sees its connection drop
                        client.close()
                        continue
                    for s in (client, server):
                        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        selector.register(s, selectors.EVENT_READ)
                    state = {"client spoke last": False}
                    pairs[client] = (server, self.counter(), state)
                    pairs[server] = (client, None, state)
                    continue
                if sock not in pairs:  # closed above, with its peer, in this same batch
                    continue
                other, parser, state = pairs[sock]
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    for s in (sock, other):
                        selector.unregister(s)
                        s.close()
                        pairs.pop(s)
                    continue
                if parser is None:
                    state["client spoke last"] = False
                    other.sendall(data)
                    continue
                commands, answer, passed = parser.feed(data)
                with self._lock:
                    self.commands += commands
                    if not state["client spoke last"] and (passed or answer):
                        self.round_trips += 1
                        state["client spoke last"] = True
                if answer:
                    sock.sendall(answer)
                    state["client spoke last"] = False
                if passed:
                    other.sendall(passed)
        for s in pairs:
            s.close()
