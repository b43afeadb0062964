"""Whether a ModelReplica is running, as the Serve controller sees it, checked in the background.

While none runs (start-up, a crash, rescheduling) a call through the model's
handle waits in Serve's router until a replica appears, so without this check
every request would hang until the ingress timeout. The Ingress asks this
watcher first and answers 503 with Retry-After at once instead; /healthz and
the UI say the model is unavailable. Before it refuses, it looks again when its
verdict is older than FRESH_S: every Ingress replica watches on its own, and one
that polled a moment before a replacement started must not refuse what another
already accepts.

The other way round, a replica that has not yet seen an outage passes a request on,
and Serve's router holds it until a replacement runs. `unless_outage` ends such a
wait when this replica's next look finds no ModelReplica running or holding calls:
nothing can then answer before a replacement, so the caller is refused like the
requests that come after it. A replica that is not RUNNING but alive (STOPPING in a
redeploy's drain, HOLDING_STATES) still finishes what it holds, so calls are left alone then.

A restarted Serve controller is not an outage. Ray Serve's data plane keeps serving while its controller
recovers (the handles keep the replicas they know), but the new controller reports the application as not
yet RUNNING and its replicas as RECOVERING, or not at all, for a moment. When the controller's worker changes,
this watcher keeps its last verdict until the application is RUNNING again (at most CONTROLLER_RECOVERY_S),
counting RECOVERING replicas as running, so nobody is refused because the control plane blinked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from ray import serve

logger = logging.getLogger("ray.serve")
T = TypeVar("T")
FRESH_S = 0.25  # an outage verdict older than this is looked at again before a request is refused
# Replica states that are not RUNNING yet may still hold calls and finish them (a redeploy drains STOPPING ones).
HOLDING_STATES = ("STOPPING", "UPDATING", "RECOVERING", "PENDING_MIGRATION")
CONTROLLER_RECOVERY_S = 60.0  # the longest a restarted controller's "not RUNNING yet" is taken for its recovery


@dataclass(frozen=True)
class Look:
    """What one read of the controller said."""

    running: int  # RUNNING replicas of the deployment
    holding: int  # alive but not RUNNING (HOLDING_STATES)
    recovering: int = 0  # RECOVERING: a restarted controller reattaching to a replica that kept running
    controller: str | None = None  # the controller's worker id (None: not known through this read)
    app_running: bool = True  # the application's status is RUNNING


class ModelOutage(Exception):
    """No ModelReplica runs or holds calls: a call waiting for one was given up (`ModelAvailability.unless_outage`)."""


class ModelAvailability:
    def __init__(self, app_name: str, deployment: str = "ModelReplica", period_s: float = 1.0) -> None:
        self.app_name = app_name
        self.deployment = deployment
        self.period_s = period_s
        self.running_replicas: int | None = None  # None until the first look: no verdict, requests pass
        self.holding_replicas = 0  # alive but not RUNNING (HOLDING_STATES): the calls they hold may still finish
        self.unavailable_since: float | None = None
        self._ever_running = False  # a ModelReplica has run: none running now is an outage, not a start-up
        self.looked_at = 0.0  # when the newest finished look began
        self._looks_finished = 0
        self._verdict_read_at = 0.0  # when the look behind the recorded verdict began
        self._fell_back = False
        self._controller: str | None = None  # the controller's worker id at the last look
        self._controller_restarted_at: float | None = None  # set until the application is RUNNING again
        self._task: asyncio.Task[None] | None = None
        self._look_lock: asyncio.Lock | None = None
        self._outage: asyncio.Event | None = None  # set while no replica runs or holds calls

    @property
    def available(self) -> bool:
        return self.running_replicas is None or self.running_replicas > 0

    async def available_now(self) -> bool:
        """`available`, looked at again first when it says no and is older than FRESH_S (one look at a
        time however many requests ask, so an outage does not flood the controller)."""
        if self.available:
            return True
        self._look_lock = self._look_lock or asyncio.Lock()
        looks_before = self._looks_finished
        async with self._look_lock:
            # A look that finished while this request waited for the lock answers for it too, however long that
            # look took (a busy host can take longer than FRESH_S to read the controller).
            if self._looks_finished == looks_before and time.monotonic() - self.looked_at > FRESH_S:
                await self._look()
        return self.available

    async def unless_outage(self, work: Awaitable[T]) -> T:
        """`work`'s result, unless a look finds no ModelReplica running or holding calls first: then `work` is
        cancelled (its deployment call too, when it awaits through `await_or_cancel`) and ModelOutage raised."""
        task = asyncio.ensure_future(work)
        outage = asyncio.ensure_future(self._outage_event().wait())
        try:
            await asyncio.wait({task, outage}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                raise ModelOutage(
                    f"the model became unavailable while this request waited: no {self.deployment} is running (being "
                    "replaced); retry shortly"
                )
            return task.result()
        finally:
            outage.cancel()
            task.cancel()  # a no-op once done; on ModelOutage or our own cancellation it stops the call

    def _outage_event(self) -> asyncio.Event:
        if self._outage is None:
            self._outage = asyncio.Event()
        return self._outage

    def describe_outage(self) -> str:
        since = "" if self.unavailable_since is None else f" for {time.monotonic() - self.unavailable_since:.0f} s"
        return (
            f"the model is unavailable{since}: no {self.deployment} is running (starting or being replaced); retry "
            "shortly"
        )

    def start(self) -> None:
        """Start watching on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await self._look()
            await asyncio.sleep(self.period_s)

    async def _look(self) -> None:
        # The watcher's looks and available_now's overlap: a slow one that read the controller before a
        # faster, later one must not overwrite that fresher verdict (a replacement seen RUNNING, then
        # "none running" recorded from a read older than it).
        started = time.monotonic()
        try:
            replicas = await asyncio.to_thread(self._running_now)
        except Exception as exc:  # noqa: BLE001 - the controller restarting: keep the last verdict, look again
            logger.warning("model availability: cannot read Serve's status (%s); keeping the last verdict", exc)
        else:
            if started >= self._verdict_read_at:
                self._verdict_read_at = started
                self._record(replicas)
        self.looked_at = max(self.looked_at, started)
        self._looks_finished += 1

    def _running_now(self) -> Look:
        """The deployment's RUNNING replicas, those in HOLDING_STATES, and who the controller is."""
        try:
            return self._running_from_details()
        except (ImportError, AttributeError, KeyError, TypeError) as exc:  # another Ray's client: the public way
            if not self._fell_back:
                logger.warning(
                    "model availability: cannot read the controller's details (%r); using serve.status(), which costs "
                    "more CPU",
                    exc,
                )
                self._fell_back = True
            return self._running_from_status()

    def _running_from_details(self) -> Look:
        """The controller's details as it sends them. serve.status() builds the same into pydantic models
        first, which costs this light replica far more CPU for a look it takes every second."""
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:  # not connected to Serve: the caller falls back to serve.status()
            raise AttributeError("no Serve controller client in this process")
        details = client.get_serve_details()
        applications = details["applications"]
        application = applications.get(self.app_name, {})
        deployments = application.get("deployments", {})
        replicas = deployments[self.deployment]["replicas"] if self.deployment in deployments else []
        states = [replica["state"] for replica in replicas]
        return Look(
            running=states.count("RUNNING"),
            holding=sum(map(states.count, HOLDING_STATES)),
            recovering=states.count("RECOVERING"),
            controller=str((details.get("controller_info") or {}).get("worker_id") or "") or None,
            app_running=application.get("status") == "RUNNING",
        )

    def _running_from_status(self) -> Look:
        application = serve.status().applications.get(self.app_name)
        if application is None or self.deployment not in application.deployments:
            return Look(0, 0)
        states = {
            str(getattr(state, "value", state)): count
            for state, count in application.deployments[self.deployment].replica_states.items()
        }
        return Look(states.get("RUNNING", 0), sum(states.get(state, 0) for state in HOLDING_STATES))

    def _controller_recovering(self, look: Look) -> bool:
        """Whether `look` comes from a controller that restarted and has not brought the application back to RUNNING
        yet (bounded by CONTROLLER_RECOVERY_S)."""
        now = time.monotonic()
        if look.controller is not None:
            if self._controller is not None and look.controller != self._controller:
                self._controller_restarted_at = now
                logger.warning(
                    "model availability: the Serve controller restarted; keeping the last verdict while it recovers"
                )
            self._controller = look.controller
        restarted = self._controller_restarted_at
        if restarted is None:
            return False
        if look.app_running or now - restarted > CONTROLLER_RECOVERY_S:
            self._controller_restarted_at = None
            return False
        return True

    def _record(self, look: Look) -> None:
        if self._controller_recovering(look):
            if self.running_replicas is None or look.running + look.recovering == 0:
                return  # no verdict yet, or nothing to read from the recovering controller: keep what we had
            look = Look(look.running + look.recovering, look.holding - look.recovering)
        was_available = self.available
        running, self.holding_replicas = look.running, look.holding
        self.running_replicas = running
        if running == 0 and self.holding_replicas == 0:
            self._outage_event().set()
        else:
            self._outage_event().clear()
        if was_available and not self.available:
            self.unavailable_since = time.monotonic()
            if self._ever_running:
                logger.warning("model availability: no %s is running; answering 503 until one is", self.deployment)
            else:
                logger.info("model availability: waiting for the first %s to load; 503 until it runs", self.deployment)
        elif not was_available and self.available:
            logger.info(
                "model availability: %d %s replica(s) running %s %.1f s",
                running,
                self.deployment,
                "again after" if self._ever_running else "after",
                time.monotonic() - (self.unavailable_since or time.monotonic()),
            )
            self.unavailable_since = None
        self._ever_running = self._ever_running or running > 0
