"""The daemon's lifecycle: build every part once, start them in order, stop them in reverse.

One event loop runs the intake consumer, the provider lanes and the HTTP server side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import aiohttp
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiohttp import web

from .api import ApiDeps, create_app
from .auth import ApiKeys
from .broker import Broker, Consumer, Topology, json_object
from .cancels import CancelBoard
from .catalog import Catalog, ModelSpec
from .claims import MongoClaims
from .contract import Request, is_valid_task_id, utcnow
from .deadletters import DeadLetterWatcher
from .delivery import DeliveryPolicy, process
from .diagnose import (
    BROKER_ERRORS,
    DATABASE_ERRORS,
    StartupError,
    broker_reason,
    database_reason,
    mask_url,
)
from .errors import ConfigError, StorageError
from .event_hub import EventHub
from .events import BrokerEvents, EventPublisher
from .httpserver import HttpLimits, make_runner
from .images import ImageDownloader
from .intake import Intake, Submitted
from .job import JobDeps
from .lane import Lane
from .limits import ProviderLimits
from .metrics import Metrics
from .netguard import AddressPolicy, guarded_connector
from .provenance import LaneSigner
from .providers.base import Provider, ProviderSettings
from .providers.registry import build_providers, load_provider_settings
from .redact import Redactor
from .replicas import Replicas, replica_id
from .settings import Settings
from .shares import SharedShares
from .storage import ImageStore, open_image_store
from .store import CommandCounter, MongoTaskStore
from .task import Task
from .webhooks import WebhookDispatcher, WebhookSettings, load_webhook_settings

log = logging.getLogger(__name__)

STALE_PART_AGE_S = 3600.0
#: claims of gone replicas older than this belong to tasks past any deadline (timeout_s is at most a day)
STALE_CLAIM_S = 25 * 3600.0


async def _drop(messages: Sequence[AbstractIncomingMessage], exc: BaseException) -> None:
    log.error(
        "dropping a dead letter imaged cannot handle (%s); it stays in the dead-letter queue",
        type(exc).__name__,
    )


class Daemon:
    """imaged as one object: ``await start()``, then ``await stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        provider_settings: Mapping[str, ProviderSettings] | None = None,
        catalog: Catalog | None = None,
        metrics: Metrics | None = None,
        image_store: ImageStore | None = None,
        webhook_settings: WebhookSettings | None = None,
    ) -> None:
        """``provider_settings`` replaces what a provider would read from the environment (the emulator's keys
        and addresses, in tests and ``--simulate``); ``image_store`` the store the settings name."""
        self.settings = settings
        self.provider_settings = load_provider_settings(provider_settings)
        self.webhook_settings = webhook_settings or load_webhook_settings()
        self.catalog = catalog or Catalog.load(settings.catalog_path)
        self.metrics = metrics or Metrics()
        self.topology = Topology.from_settings(settings)
        try:
            self.store = MongoTaskStore.connect(
                settings.mongodb_url.get_secret_value(),
                settings.mongodb_db,
                listeners=[CommandCounter(self.metrics.db_commands)],
            )
        except DATABASE_ERRORS as exc:
            raise self._unusable("database", exc) from None
        self.broker = Broker(settings.amqp_url.get_secret_value(), self.topology)
        self.replica = replica_id()
        self.replicas = Replicas(self.store.db["replicas"], self.replica, settings.lease_ttl_s)
        self.shares = SharedShares(self.store.db["shares"], self.replicas)
        self.claims = MongoClaims(self.store.db["claims"], self.replicas)
        self.cancels = CancelBoard()
        #: a store given by the caller is the caller's to close
        self._owns_images = image_store is None
        try:
            self.images = image_store or open_image_store(settings)
        except StorageError as exc:
            raise ConfigError(str(exc)) from None
        #: every secret of the core's, the providers' and the image store's settings, kept out of what providers say
        self.redactor = Redactor.from_models(
            [
                settings,
                *self.provider_settings.values(),
                *self.images.settings_models(),
                self.webhook_settings,
            ]
        )
        self.webhooks = WebhookDispatcher(
            self.webhook_settings,
            settings.amqp_url.get_secret_value(),
            self.topology,
            self.store.db,
            self.metrics,
            self.redactor,
        )
        self.event_hub = EventHub(self.broker)
        self._stopping = asyncio.Event()
        self._draining = asyncio.Event()  # set first on shutdown: no new submits
        self._background: list[asyncio.Task[None]] = []
        self.providers: dict[str, Provider] = {}
        self.lanes: list[Lane] = []
        self.session: aiohttp.ClientSession | None = None
        self.download_session: aiohttp.ClientSession | None = None
        self.intake: Intake | None = None
        self._intake_channel: AbstractChannel | None = None
        self._consumers: list[Consumer] = []  # intake and dead-letter watcher
        self._runner: web.AppRunner | None = None
        self.http_url: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            self.providers = build_providers(self.catalog, self.provider_settings, self.session)
        except BaseException:
            await self.session.close()  # nothing else has started yet
            raise
        try:
            await self.store.ensure_indexes()
            await self.replicas.ensure_indexes()
            await self.claims.ensure_indexes()
        except DATABASE_ERRORS as exc:
            raise self._unusable("database", exc) from None
        try:
            await self.broker.connect()
        except BROKER_ERRORS as exc:
            raise self._unusable("broker", exc) from None
        assert self.broker.channel is not None
        await self.broker.declare(self.broker.channel, list(self.providers))
        try:
            await self.images.start()
        except (StorageError, OSError) as exc:
            raise ConfigError(f"image store: {exc}") from None
        await self._sweep_images()
        try:
            await self.webhooks.start()
        except BROKER_ERRORS as exc:
            raise self._unusable("broker", exc) from None
        # The HTTP app checks its authentication settings here: fail before any consumer starts.
        http_limits = HttpLimits(
            header_timeout_s=s.http_header_timeout_s, body_timeout_s=s.http_body_timeout_s
        )
        signer = await LaneSigner.load(self.store.db["internal"])
        api = ApiDeps(
            settings=s,
            tasks=self.store,
            catalog=self.catalog,
            providers=self.providers.keys(),
            submit=self._submit,
            cancel=self.cancel,
            readiness=self.readiness,
            registry=self.metrics.registry,
            api_keys=ApiKeys(self.store.db["api_keys"]),
            images=self.images,
            link_key=signer.derived_key(b"file-links"),
            openai_parameters=self._openai_parameters,
            subscribe=self.event_hub.subscribe,
        )
        self._runner = make_runner(create_app(api), http_limits, access_log=None)
        await self._runner.setup()

        events = EventPublisher(BrokerEvents(self.broker), self.store, self.webhooks)
        # Image URLs come from provider replies: their own session only reaches addresses the policy allows.
        policy = AddressPolicy(s.download_allowed_networks)
        self.download_session = aiohttp.ClientSession(connector=guarded_connector(policy))
        downloader = ImageDownloader(
            self.download_session,
            self.images,
            max_bytes=s.image_max_bytes,
            timeout_s=s.download_timeout_s,
            allowed_hosts=s.image_allowed_hosts,
            policy=policy,
        )
        deps = JobDeps(
            s,
            self.catalog,
            self.store,
            events,
            downloader,
            self.metrics,
            self.claims,
            self.cancels,
            self._draining,
            self.redactor,
        )
        limits: list[ProviderLimits] = []
        for provider in self.providers.values():
            limits.append(
                ProviderLimits(
                    self.shares,
                    provider.name,
                    provider.credentials(),
                    provider.settings.submit_per_second,
                    poll_per_second=provider.settings.poll_per_second,
                    cooldown_s=s.credential_cooldown_s,
                    metrics=self.metrics,
                )
            )
        # The keeper registers this replica and takes the units its tasks will want before any task arrives.
        await self.shares.keep()
        self._background = [
            asyncio.create_task(self.shares.run(self._stopping), name="shared-limits"),
            asyncio.create_task(self._janitor(), name="janitor"),
            asyncio.create_task(self._watch_connections(), name="connection-watch"),
        ]
        for provider, provider_limits in zip(self.providers.values(), limits, strict=True):
            lane = Lane(provider, self.broker, deps, provider_limits)
            await lane.start(list(self.providers))
            self.lanes.append(lane)

        self.intake = Intake(
            s,
            self.broker,
            self.store,
            events,
            self.catalog,
            self.providers,
            self.metrics,
            signer,
            check_webhook=self.webhooks.check_url,
        )
        watcher = DeadLetterWatcher(
            self.broker, self.store, events, self.intake, self.claims, signer, self.metrics
        )
        self._intake_channel = await self.broker.open_consumer_channel(prefetch=s.intake_prefetch)
        for queue_name, handle in (
            (self.topology.requests, self.intake.handle),
            (self.topology.dead_watch, watcher.handle),
        ):
            consumer = Consumer(
                self._intake_channel,
                queue_name,
                self._consume(queue_name, handle),
                functools.partial(self.broker.declare, providers=list(self.providers)),
            )
            await consumer.start()
            self._consumers.append(consumer)
        await self.broker.consume_control(self._intake_channel, self._on_control)

        assert self._runner is not None
        site = web.TCPSite(self._runner, s.http_host, s.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(
                "http", f"cannot listen on {s.http_host}:{s.http_port}: {exc.strerror}"
            ) from None
        port = self._runner.addresses[0][1]
        self.http_url = f"http://{s.http_host}:{port}"
        self.metrics.connection_up.labels("broker").set(1)
        self.metrics.connection_up.labels("database").set(1)
        log.info(
            "imaged ready: providers %s, HTTP on %s, queues %s.*",
            ", ".join(self.providers) or "none",
            self.http_url,
            self.topology.prefix,
        )

    def _unusable(self, service: str, exc: BaseException) -> StartupError:
        s = self.settings
        if service == "broker":
            where, why = mask_url(s.amqp_url.get_secret_value()), broker_reason(exc)
        else:
            where, why = mask_url(s.mongodb_url.get_secret_value()), database_reason(exc, 5.0)
        return StartupError(service, f"cannot use the {service} at {where}: {why}")

    async def stop(self) -> None:
        """Stop consuming, let jobs finish within the grace period, then close everything in reverse order."""
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        self._draining.set()
        for lane in self.lanes:
            await lane.stop_consuming()
        await asyncio.gather(*(lane.drain(self.settings.shutdown_grace_s) for lane in self.lanes))
        self._stopping.set()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._leave()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.webhooks.stop()
        await self.broker.close()
        await self.store.close()
        for session in (self.session, self.download_session):
            if session is not None:
                await session.close()
        if self._owns_images:
            await self.images.close()
        log.info("imaged stopped")

    async def run_until(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # close whatever did start, then report
            raise
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- parts --------------------------------------------------------------------------------------------------

    async def _retention(self) -> None:
        cutoff = utcnow() - timedelta(days=self.settings.retention_days)
        # A claim outlives its task's deadline (a day at most) before it may go.
        await self.claims.purge(before=min(cutoff, utcnow() - timedelta(seconds=STALE_CLAIM_S)))
        delete = self.images.delete if self.settings.retention_delete_images else None
        removed = await self.store.purge_finished(before=cutoff, delete_images=delete)
        await self.webhooks.log.purge(before=cutoff)
        if removed:
            log.info("removed %d finished task(s) older than %g days", removed, self.settings.retention_days)

    async def _sweep_images(self) -> None:
        """What crashed writers left in the image store (partial files, incomplete uploads): old enough that no
        live replica can still be writing it."""
        try:
            removed = await self.images.sweep(STALE_PART_AGE_S)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            log.warning("could not sweep the image store: %s", type(exc).__name__)
            return
        if removed:
            log.info("removed %d partial image(s) left by a crash", removed)

    async def _watch_connections(self) -> None:
        """Keep the connection gauges current, and consume again where the broker cancelled a consumer."""
        while not self._stopping.is_set():
            try:
                if not self._draining.is_set():
                    for consumer in [
                        *self._consumers,
                        *(lane.consumer for lane in self.lanes if lane.consumer),
                        *self.webhooks.consumers,
                    ]:
                        try:  # one consumer's trouble (its connection reconnecting) must not skip the rest
                            await consumer.ensure()
                        except Exception as exc:  # noqa: BLE001 - checked again in 5 s
                            log.warning(
                                "consumer check of %s failed: %s", consumer.queue_name, type(exc).__name__
                            )
                await self.readiness()
            except Exception:
                log.exception("connection check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 5)

    async def _leave(self) -> None:
        """Give back shared units and deregister, so that other replicas need not wait for the TTL."""
        if not self.shares.pools:
            return
        try:
            await self.shares.release_all()
            await self.replicas.leave()
        except Exception as exc:  # noqa: BLE001 - they expire by themselves
            log.warning("could not deregister this replica: %s", type(exc).__name__)

    async def _janitor(self) -> None:
        """Periodic upkeep; logs a failure and keeps looping. Retention runs rarely: it reads many tasks."""
        retention_due = time.monotonic() + self.settings.retention_interval_s
        while not self._stopping.is_set():
            try:
                await self.replicas.purge_expired()
                if time.monotonic() >= retention_due:
                    retention_due = time.monotonic() + self.settings.retention_interval_s
                    await self._sweep_images()  # with or without retention: crashed uploads cost storage
                    if self.settings.retention_days > 0:
                        await self._retention()
            except Exception:
                log.exception("janitor run failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 60)

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        """A broadcast of another replica (or a command): a cancel request for a task."""
        task_id = (json_object(message.body) or {}).get("cancel")
        if isinstance(task_id, str) and is_valid_task_id(task_id):
            self.cancels.cancel(task_id)

    async def cancel(self, task_id: str) -> Task | None:
        """Request the cancel of a task: stored first (for jobs yet to start), then broadcast (for the running
        job, wherever it is). Returns the task as stored, or None if there is none."""
        task = await self.store.request_cancel(task_id)
        if task is not None:
            await self.broker.publish_control({"cancel": task_id})
        return task

    def _consume(
        self, queue: str, handle: Callable[[AbstractIncomingMessage], Awaitable[None]]
    ) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
        """A consumer callback that runs ``handle`` under the delivery policy (``delivery.py``). A crash is
        requeued and left to the broker's delivery limit, whose dead letters the watcher turns into failed tasks
        (the watcher's own queue has no limit: a message it cannot handle is logged and dropped the third time)."""
        limit = 3 if queue == self.topology.dead_watch else None
        policy = DeliveryPolicy(queue, delivery_limit=limit, give_up=_drop if limit else None)

        async def consume(message: AbstractIncomingMessage) -> None:
            await process([message], lambda _: handle(message), policy, self.broker, self.metrics)

        return consume

    # -- queries used by the HTTP API ---------------------------------------------------------------------------

    async def _submit(
        self,
        request: Request,
        *,
        task_id: str,
        owner: str | None,
        correlation_id: str | None,
        reply_to: str | None,
        fingerprint: str | None = None,
    ) -> Submitted:
        """A request from the HTTP API, handed to intake in this process."""
        if self.intake is None:
            raise RuntimeError("imaged is still starting")
        return await self.intake.submit(
            request,
            task_id=task_id,
            owner=owner,
            correlation_id=correlation_id,
            reply_to=reply_to,
            fingerprint=fingerprint,
        )

    def _openai_parameters(self, spec: ModelSpec, **request: Any) -> dict[str, Any]:
        """An OpenAI images request as the parameters of the model's provider (see the API's ``openai.py``)."""
        return self.providers[spec.provider].openai_parameters(spec, **request)

    async def readiness(self) -> dict[str, Any]:
        broker_ok = self.broker.is_connected
        try:
            db_ok = await asyncio.wait_for(self.store.ping(), timeout=2.0)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            db_ok = False
        consumers_ok = bool(self._consumers) and all(lane.consuming for lane in self.lanes)
        self.metrics.connection_up.labels("broker").set(int(broker_ok))
        self.metrics.connection_up.labels("database").set(int(db_ok))
        return {
            "ready": broker_ok and db_ok and consumers_ok,
            "broker": broker_ok,
            "database": db_ok,
            "consumers": consumers_ok,
            "lanes": {lane.provider.name: len(lane.jobs) for lane in self.lanes},
            "credentials": {lane.provider.name: lane.limits.status() for lane in self.lanes},
        }
