"""A worker host of its own for partition tests: a network namespace whose links to PostgreSQL and
to Redis can each be cut — frames dropped on the worker's side, so that its connections hang
(no RST, no "host unreachable"), as when a switch or a cable dies — and healed.

The plumbing (names ``tapw<slot>…``, addresses ``10.231.<slot>.0/24``, one veth pair per service):

* **PostgreSQL: a direct TCP connection.** The namespace's loopback stays down and its route to
  127.0.0.1 goes over the PostgreSQL link to the host, where ``route_localnet`` on the host's side
  of that link lets the packets reach the server, which listens on 127.0.0.1 only. The worker keeps
  the DATABASE_URL of every other process, and the server's own socket faces the partition: what
  the server does about a client gone silent — TCP keepalives, its user timeout,
  ``idle_in_transaction_session_timeout`` — happens as in production. A forwarder in between
  would hide all of it (the server's peer would be the forwarder's live socket, so a session cut
  off in the middle of a COPY would never be ended), and that is what the tests must see. The
  server accepts TCP clients from 127.0.0.1 only (pg_hba.conf), so while a namespace exists its
  address has a ``trust`` line of its own there (marked with this file's name, reloaded, removed
  again; ``destroy`` also removes one an earlier run left).
* **Redis: a small forwarder thread** in the test process, listening on the host's side of the
  Redis link (the worker's broker URL names it). Redis' protected mode turns away every client
  that is not at 127.0.0.1 exactly, and ``CONFIG SET protected-mode no`` would be undone by any
  test that restarts Redis (the fault suite does); the forwarder keeps working across restarts.
  Nothing is lost by it: Redis does not try to tell whether a client is alive (no ``timeout``,
  keepalives of minutes), a message it hands to a cut-off worker goes into that connection either
  way, and the worker's side, where the partition is, hangs as with a direct connection.

A cut of one link drops its frames in both directions, the other link untouched, with no
netfilter: in the namespace, the neighbour entry of the host's address on that link is pointed at
a MAC nobody has (frames out are not the host's, which discards them), and the interface takes
another MAC while the host's entry for the namespace's address stays pinned to the original (frames
in are not the interface's, which discards them). Healing puts both back. In the namespace TCP's
retransmission backoff is capped at RTO_MAX_MS, so that a healed connection resumes within seconds;
the cut outlasts no timeout of the worker's (see ``_create``).

``pin_server_receive_buffers`` sizes the server's receive buffer of the namespace's sessions, for a
test that needs the data of a COPY to stay on the worker's side of a cut.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import re
import selectors
import signal
import socket
import subprocess
import threading
from contextlib import suppress
from pathlib import Path

PREFIX = "tapw"
BOGUS_MAC = "02:00:00:00:00:01"
OTHER_MAC = "02:00:00:00:00:02"
HBA_MARK = "# tests/support/netns.py"
RTO_MAX_MS = 3000


def _slot():
    slot = os.environ.get("TAP_TEST_SLOT", "")
    return slot if slot.isdigit() else "x"


def ip(*args, check=True):
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _mac(device, namespace=None):
    where = ["-n", namespace] if namespace else []
    return re.search(r"link/ether (\S+)", ip(*where, "link", "show", device)).group(1)


# --- pg_hba.conf: the namespace's address may connect ----------------------------------------------


def _psql(dsn, sql):
    import psycopg

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(sql).fetchone()[0]


def _set_hba_line(dsn, name, line):
    """Put ``line`` (None: nothing) as the pg_hba.conf line of namespace ``name``; reload."""
    path = Path(_psql(dsn, "SHOW hba_file"))
    mark = f"{HBA_MARK} {name}"
    with open("/tmp/tapw-pg-hba.lock", "w") as lock:  # sessions of other slots edit it too
        fcntl.flock(lock, fcntl.LOCK_EX)
        lines = [kept for kept in path.read_text().splitlines() if not kept.endswith(mark)]
        if line:
            lines.append(f"{line} {mark}")
        path.write_text("\n".join(lines) + "\n")
        _psql(dsn, "SELECT pg_reload_conf()")


# --- the Redis forwarder ------------------------------------------------------------------------------


class Forwarder(threading.Thread):
    """Accepts on ``listen`` and relays each connection to ``target``, both ways, in one thread."""

    def __init__(self, listen, target):
        super().__init__(name=f"forwarder-{listen[0]}:{listen[1]}", daemon=True)
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.server, selectors.EVENT_READ)
        self.peers = {}
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                if key.fileobj is self.server:
                    self._accept()
                else:
                    self._relay(key.fileobj)

    def _accept(self):
        with suppress(BlockingIOError):
            downstream, _ = self.server.accept()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                downstream.close()
                return
            for sock in (downstream, upstream):
                sock.setblocking(True)  # writes block until the peer takes them, like the server's own
                sock.settimeout(None)
            self.peers[downstream], self.peers[upstream] = upstream, downstream
            self.selector.register(downstream, selectors.EVENT_READ)
            self.selector.register(upstream, selectors.EVENT_READ)

    def _relay(self, sock):
        other = self.peers.get(sock)
        try:
            data = sock.recv(65536)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        self._drop(sock)

    def _drop(self, sock):
        other = self.peers.pop(sock, None)
        for each in (sock, other):
            if each is None:
                continue
            self.peers.pop(each, None)
            with suppress(KeyError, ValueError):
                self.selector.unregister(each)
            each.close()

    def stop(self):
        self.stopping.set()
        self.join(timeout=5)
        for sock in list(self.peers):
            self._drop(sock)
        self.selector.close()
        self.server.close()


# --- the namespace -----------------------------------------------------------------------------------


class WorkerHost:
    """A network namespace with one link per service; see the module's docstring.

    ``env(base)`` gives a worker's environment (DATABASE_URL unchanged, the broker through the
    forwarder); ``wrapper`` runs a command inside; ``partition(service)`` / ``heal(service)``.
    """

    def __init__(self, database_dsn, redis=("127.0.0.1", 6379), slot=None):
        self.slot = slot or _slot()
        self.name = f"{PREFIX}{self.slot}"
        number = int(self.slot) if self.slot.isdigit() else 10
        self.subnet = f"10.231.{number}"
        self.dsn = database_dsn
        self.redis_target = redis
        #: service → (host-side interface, namespace-side interface, host address, namespace address)
        self.links = {
            "postgres": (f"{self.name}hp", f"{self.name}np", f"{self.subnet}.1", f"{self.subnet}.2"),
            "redis": (f"{self.name}hr", f"{self.name}nr", f"{self.subnet}.5", f"{self.subnet}.6"),
        }
        self.original_macs = {}
        self.cut = set()
        self.forwarder = None

    @property
    def wrapper(self):
        return ["ip", "netns", "exec", self.name]

    @property
    def postgres_address(self):
        """The namespace's address as PostgreSQL sees it (``pg_stat_activity.client_addr``)."""
        return self.links["postgres"][3]

    def env(self, base):
        host_address = self.links["redis"][2]
        broker = re.sub(r"^(redis://)[^/]*", rf"\g<1>{host_address}:{self.redis_target[1]}", base["CELERY_BROKER_URL"])
        return {**base, "CELERY_BROKER_URL": broker}

    # --- life cycle

    def create(self):
        self.destroy()  # leftovers of an earlier run of this slot
        try:
            self._create()
        except BaseException:
            self.destroy()
            raise
        return self

    def _create(self):
        ip("netns", "add", self.name)
        for service, (host_if, ns_if, host_ip, ns_ip) in self.links.items():
            ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            ip("link", "set", ns_if, "netns", self.name)
            ip("addr", "add", f"{host_ip}/30", "dev", host_if)
            ip("link", "set", host_if, "up")
            ip("-n", self.name, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
            ip("-n", self.name, "link", "set", ns_if, "up")
            host_mac, ns_mac = _mac(host_if), _mac(ns_if, self.name)
            self.original_macs[service] = ns_mac
            # Pinned both ways: no ARP is ever needed, so a partition cannot be undone by one.
            ip("neigh", "replace", ns_ip, "lladdr", ns_mac, "dev", host_if, "nud", "permanent")
            ip("-n", self.name, "neigh", "replace", host_ip, "lladdr", host_mac, "dev", ns_if, "nud", "permanent")
        host_if, ns_if, host_ip, ns_ip = self.links["postgres"]
        _sysctl(f"net.ipv4.conf.{host_if}.route_localnet", "1")
        _sysctl(f"net.ipv4.conf.{ns_if}.route_localnet", "1", namespace=self.name)
        # A healed connection resumes at its next retransmission: at most RTO_MAX_MS later, not
        # the up to two minutes of TCP's exponential backoff (the cut still outlasts no timeout:
        # with 15 retries at 3 s at most, a connection gives up only after ~40 s of silence).
        _sysctl("net.ipv4.tcp_rto_max_ms", str(RTO_MAX_MS), namespace=self.name)
        ip("-n", self.name, "route", "add", "127.0.0.1/32", "via", host_ip, "dev", ns_if, "src", ns_ip)
        _set_hba_line(self.dsn, self.name, f"host all all {ns_ip}/32 trust")
        self.forwarder = Forwarder((self.links["redis"][2], self.redis_target[1]), self.redis_target)
        self.forwarder.start()

    def destroy(self):
        """Remove this slot's namespace, links and pg_hba.conf line (also an earlier run's)."""
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None
        if self.name in ip("netns", "list").split():
            for pid in ip("netns", "pids", self.name, check=False).split():  # a worker an earlier run left
                with suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", self.name, check=False)
        for line in ip("-o", "link", "show").splitlines():
            found = re.match(r"\d+: ([^:@]+)", line)
            if found and found.group(1).startswith(self.name) and found.group(1)[len(self.name):] in ("hp", "hr"):
                ip("link", "del", found.group(1), check=False)
        _set_hba_line(self.dsn, self.name, None)
        self.cut.clear()

    # --- the fault

    def partition(self, service):
        """Drop every frame of ``service``'s link, in both directions, on the namespace's side."""
        host_if, ns_if, host_ip, _ = self.links[service]
        # The new MAC first: changing it flushes the interface's neighbour entries, the pinned
        # one too — set after it, the bogus entry stays (and no ARP can find the host again).
        ip("-n", self.name, "link", "set", ns_if, "address", OTHER_MAC)
        ip("-n", self.name, "neigh", "replace", host_ip, "lladdr", BOGUS_MAC, "dev", ns_if, "nud", "permanent")
        self.cut.add(service)
        table = ip("-n", self.name, "neigh", "show", "dev", ns_if)
        assert f"{host_ip} lladdr {BOGUS_MAC} PERMANENT" in table and _mac(ns_if, self.name) == OTHER_MAC, table

    def heal(self, service):
        host_if, ns_if, host_ip, _ = self.links[service]
        ip("-n", self.name, "link", "set", ns_if, "address", self.original_macs[service])
        ip("-n", self.name, "neigh", "replace", host_ip, "lladdr", _mac(host_if), "dev", ns_if, "nud", "permanent")
        self.cut.discard(service)

    def heal_all(self):
        for service in list(self.cut):
            self.heal(service)

    # --- what the server sees

    def postgres_sessions(self):
        """The namespace's sessions on the server: (pid, state, in a transaction, wait event type, query)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            return conn.execute(
                "SELECT pid, state, xact_start IS NOT NULL, wait_event_type, query FROM pg_stat_activity "
                "WHERE client_addr = %s", [self.postgres_address]).fetchall()

    def pin_server_receive_buffers(self, size):
        """Give the server's sockets of the namespace's sessions a fixed receive buffer of ``size``
        bytes (SO_RCVBUF, which also stops TCP's autotuning from growing it), as a server with
        small socket buffers has. Returns how many. The socket is the server's: it is reached
        with pidfd_getfd(2) (root), set, and left to the server."""
        listed = subprocess.run(["ss", "-tnpH", "state", "established", "dst", self.postgres_address],
                                capture_output=True, text=True, timeout=30).stdout
        found = re.findall(r'"postgres",pid=(\d+),fd=(\d+)', listed)
        for pid, fd in found:
            _set_receive_buffer(int(pid), int(fd), size)
        return len(found)


SYS_PIDFD_GETFD = 438  # x86_64 and most others (asm-generic)


def _set_receive_buffer(pid, fd, size):
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        local = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if local < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd of fd {fd} of process {pid}")
        with socket.socket(fileno=local) as sock:  # closes our copy only
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size // 2)  # the kernel doubles it
    finally:
        os.close(pidfd)


def _sysctl(key, value, namespace=None):
    path = Path("/proc/sys") / key.replace(".", "/")
    if namespace is None:
        path.write_text(value)
    else:
        subprocess.run(["ip", "netns", "exec", namespace, "sh", "-c", f"echo {value} > {path}"], check=True,
                       timeout=30)
