"""Prometheus metrics. The registry is passed in, so tests and several daemons in one process never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from . import __version__

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900)


class Metrics:
    """Every metric imaged exports, prefixed ``imaged_``, with bounded label sets."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Info("imaged_build", "imaged build information", registry=r)
        self.build_info.info({"version": __version__})
        self.tasks = Counter(
            "imaged_tasks_total",
            "Tasks that reached a terminal status",
            ["provider", "model", "status"],
            registry=r,
        )
        self.task_errors = Counter(
            "imaged_task_errors_total", "Failed tasks by error category", ["provider", "category"], registry=r
        )
        self.task_duration = Histogram(
            "imaged_task_duration_seconds",
            "Time from acceptance to terminal status",
            ["provider", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "imaged_stage_duration_seconds",
            "Time spent per stage (queue_wait, slot_wait, provider, download, publish)",
            ["provider", "stage"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "imaged_tasks_in_flight", "Tasks being worked on by this process", ["provider"], registry=r
        )
        self.requests_received = Counter(
            "imaged_requests_total", "Requests taken from the request queue", ["outcome"], registry=r
        )
        self.provider_requests = Counter(
            "imaged_provider_requests_total",
            "Provider HTTP calls",
            ["provider", "operation", "outcome"],
            registry=r,
        )
        self.download_bytes = Counter(
            "imaged_download_bytes_total", "Image bytes downloaded", ["provider"], registry=r
        )
        self.redeliveries = Counter(
            "imaged_redeliveries_total",
            "Messages received again after a failure elsewhere",
            ["queue"],
            registry=r,
        )
        self.dead_letters = Counter(
            "imaged_dead_letters_total", "Messages sent to the dead-letter queue", ["reason"], registry=r
        )
        self.submit_unknown = Counter(
            "imaged_submit_unknown_total",
            "Tasks found submitted without a recorded provider task id",
            ["provider", "policy"],
            registry=r,
        )
        self.slots_in_use = Gauge(
            "imaged_provider_slots_in_use",
            "Provider slots this process holds, per credential (tasks at the provider)",
            ["provider", "credential"],
            registry=r,
        )
        self.credential_up = Gauge(
            "imaged_credential_up",
            "Whether a provider credential is in rotation (1) or out after auth/quota errors (0)",
            ["provider", "credential"],
            registry=r,
        )
        self.db_commands = Counter(
            "imaged_db_commands_total",
            "Commands this process sent to the database, by command name",
            ["command"],
            registry=r,
        )
        self.connection_up = Gauge(
            "imaged_connection_up",
            "Whether a backing service is reachable (1) or not (0)",
            ["service"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "imaged_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, retry, gave_up, refused)",
            ["outcome"],
            registry=r,
        )
