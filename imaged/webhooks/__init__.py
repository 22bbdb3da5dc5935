"""Signed, durable webhooks: a task's events POSTed to the URL its request names (or its tenant's default).

=================  ===============================================================================
``settings``       ``IMAGED_WEBHOOK_*``: the secret, the retry window, the network policy, tenant URLs
``signing``        Standard Webhooks headers (``webhook-id``, ``-timestamp``, ``-signature``)
``schedule``       backoff tiers and the retry window
``queue``          the durable queues on RabbitMQ and the message that travels between them
``sender``         one attempt, through the network guard
``attempts``       the record of attempts (``webhook_attempts``), what ``imaged webhooks`` shows
``dispatcher``     :class:`WebhookDispatcher`: enqueue, consume, retry, replay
=================  ===============================================================================
"""

from __future__ import annotations

from .dispatcher import WebhookDispatcher
from .settings import WebhookSettings, load_webhook_settings

__all__ = ["WebhookDispatcher", "WebhookSettings", "load_webhook_settings"]
