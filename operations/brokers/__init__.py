"""kombu transports with the fixes the app's guarantees rely on, picked by the broker URL.

``redis://`` gets a transport whose workers outlive a Redis restart (``redis.py``), and
``filesystem://`` one that publishes atomically (``filesystem.py``). ``operations.integration``
sets one of them as the Celery app's ``broker_transport`` unless the host chose a transport
itself or turned this off (TAP_BROKER_TRANSPORTS = False).
"""

from __future__ import annotations

TRANSPORTS = {
    "redis": "operations.brokers.redis:Transport",
    "filesystem": "operations.brokers.filesystem:Transport",
}


def transport_for(broker_url: object) -> str | None:
    """The app's transport for a broker URL (the first, if a list), or None to keep kombu's."""
    if isinstance(broker_url, (list, tuple)):
        broker_url = broker_url[0] if broker_url else None
    if not isinstance(broker_url, str) or "://" not in broker_url:
        return None
    scheme = broker_url.split("://", 1)[0].lower()
    return TRANSPORTS.get(scheme)
