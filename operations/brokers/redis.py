"""Celery's Redis transport, with a worker that outlives a Redis restart while a task runs.

When Redis goes away, the worker closes its channel, and closing gives the unacknowledged
messages back — through the connection that was just closed — and the task still running acks
its message on that closed channel when it ends. kombu 5.7 raises AttributeError for both
(``'NoneType' object has no attribute 'hostname'`` / ``'client'``), Celery takes it for an
unrecoverable error, and the worker exits.

Here a channel whose connection is gone leaves Redis alone: its unacknowledged messages stay in
Redis' unacked set (restored by a worker after the visibility timeout, where the engine turns the
duplicate away; gone anyway if Redis restarted empty, and then the database's reconciler brings
the operation back), and the worker reconnects.

And it builds one Redis client per connection pool instead of one per command: kombu's builds a
new ``redis.Redis`` for every publish, delivery and ack, which cost a bare Celery task hop about
a sixth of its CPU (tests/test_redis_transport.py; bench/README.md).
"""

import logging

from kombu.transport import redis, virtual

log = logging.getLogger(__name__)


class QoS(redis.QoS):
    def _connection_gone(self):
        transport = self.channel.connection
        return transport is None or transport.client is None

    def restore_unacked(self, client=None):
        if client is None and self._connection_gone():
            self._delivered.clear()
            return None
        return super().restore_unacked(client)

    def ack(self, delivery_tag):
        if self._connection_gone():
            log.warning("message %s was received on a Redis connection that is now closed: it stays "
                        "unacknowledged in Redis until the visibility timeout", delivery_tag)
            return virtual.QoS.ack(self, delivery_tag)
        return super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        if self._connection_gone():
            return self.ack(delivery_tag)
        return super().reject(delivery_tag, requeue=requeue)


class Channel(redis.Channel):
    QoS = QoS
    _shared_client = None

    def _create_client(self, asynchronous=False):
        """One client per connection pool, not one per command: kombu builds a new ``redis.Redis``
        for every publish, delivery and ack (copying its response callbacks, ~60–80 µs each, three
        times per task), yet a client only hands commands to its pool, which checks a connection
        out for each one, so one serves every thread. A new pool (after a fork or a reconnect)
        gets a new client."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client, pool = self._shared_client, self.pool
        if client is None or client.connection_pool is not pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(redis.Transport):
    Channel = Channel
