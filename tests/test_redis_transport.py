"""operations/brokers/redis.py on a real Redis: one client per connection pool, where kombu's
own transport builds a new one for every publish, delivery and ack."""

import uuid
from types import SimpleNamespace

import pytest
from django.conf import settings
from kombu import Connection, Exchange, Queue

pytestmark = [pytest.mark.integration, pytest.mark.backends("pg-redis")]

MESSAGES = 20


def _round_trips(transport, messages=MESSAGES):
    """Publish ``messages`` messages on a fresh queue, then get and ack each. Returns the clients
    built (their pools), the payloads and delivery tags received, the channel, its connection and
    the queue (the caller deletes it and releases the connection)."""
    name = f"client-reuse-{uuid.uuid4().hex[:8]}"  # its own exchange too: no other run's queue is bound
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    connection = Connection(settings.CELERY_BROKER_URL, transport=transport)
    channel = connection.default_channel
    built = []
    client_class = channel.Client

    def counting_client(*args, **kwargs):
        built.append(kwargs.get("connection_pool"))
        return client_class(*args, **kwargs)

    channel.Client = counting_client
    bound = queue(channel)
    bound.declare()
    received, tags = [], []
    try:
        producer = connection.Producer(channel)
        for number in range(messages):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key=name)
        while (message := bound.get(no_ack=False)) is not None:
            received.append(message.payload["n"])
            tags.append(message.delivery_tag)
            message.ack()
        return SimpleNamespace(built=built, received=received, tags=tags, channel=channel,
                               connection=connection, queue=bound)
    except BaseException:
        bound.delete()
        connection.release()
        raise


def test_one_client_serves_every_publish_delivery_and_ack():
    run = _round_trips("operations.brokers.redis:Transport")
    try:
        assert run.received == list(range(MESSAGES))
        # One for the commands (the BRPOP client of a consuming worker would be a second one).
        assert len(run.built) == 1, f"{len(run.built)} clients for {MESSAGES} publishes, deliveries and acks"
        assert run.built[0] is run.channel.pool
        redis = run.channel._create_client()
        assert not any(redis.hexists(run.channel.unacked_key, tag) for tag in run.tags), \
            "an acknowledged message is still in Redis' unacked set"
    finally:
        run.queue.delete()
        run.connection.release()


def test_kombus_own_transport_builds_a_client_per_command():
    """What the test above guards against: without the shared client, three per message."""
    run = _round_trips("redis")
    try:
        assert run.received == list(range(MESSAGES))
        assert len(run.built) >= 3 * MESSAGES
    finally:
        run.queue.delete()
        run.connection.release()


def test_a_new_pool_after_a_fork_gets_a_new_client():
    """A forked pool process drops the channel's pools (kombu's after-fork clean-up): the client of
    the old pool is not used any more, and messages still go through."""
    run = _round_trips("operations.brokers.redis:Transport", messages=1)
    try:
        old_client = run.channel._create_client()
        run.channel._after_fork()
        run.connection.Producer(run.channel).publish({"n": "after"}, exchange=run.queue.exchange,
                                                     routing_key=run.queue.routing_key)
        message = run.queue.get(no_ack=False)
        assert message is not None and message.payload == {"n": "after"}
        message.ack()
        assert len(run.built) == 2
        assert run.built[1] is run.channel.pool is not run.built[0]
        assert run.channel._create_client() is not old_client
    finally:
        run.queue.delete()
        run.connection.release()
