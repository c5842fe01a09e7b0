"""Which model versions a service process holds, and how it changes them without a restart.

The service serves what SCOREBOX_MODEL_TAG names: a version, ``latest`` (the newest signed
version) or an alias. When the reference can move (an alias, or ``latest`` in the registry),
each worker process polls the registry every SCOREBOX_MODEL_POLL_SECONDS; on a move it loads the
new version beside the old one through the catalog (its signature verified by a trusted key
before anything of it is read; imported from the registry when the local store lacks it), checks
its metadata and a prediction, then switches with one assignment: a request takes the current
version once and finishes on it. A version that fails a check is refused, the old one keeps
serving, `/v1/model` says why and ``scorebox_model_refusals_total`` counts it. Batch jobs pin an
exact version, which the service loads on demand and keeps among a few recent ones
(:class:`Pinned`), but only a version a queued or running job pinned, or one
SCOREBOX_SERVICE_PINNABLE names: a client cannot make the service import what it likes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from threadpoolctl import threadpool_limits

from scorebox.aliases import incompatibility
from scorebox.catalog import LATEST, VERSION, Catalog, Resolved
from scorebox.db import Tables, make_engine
from scorebox.errors import ModelError, RegistryUnavailableError, TrustError
from service.batching import Coalescer
from service.drift import OnlineDrift
from service.predict import Predictor

log = logging.getLogger(__name__)

# Refusals remembered (so a bad version is not loaded again and again), the most recent first.
REFUSED_KEPT = 64
# How long a job's pin is believed before the jobs table is asked again (a version no job pins
# is asked about every time: a stale "no" would fail the chunks of a job just submitted).
PIN_CHECK_SECONDS = 5.0

refusals = Counter(
    "scorebox_model_refusals",
    "Model versions this process refused to load, by reason (unsigned, unknown_key, "
    "bad_signature, wrong_version, tampered, too_large, unsafe, malformed, incompatible, "
    "not_pinned, other)",
    ["reason"],
)


def count_refusal(exc: BaseException) -> None:
    """Count a refused version in ``scorebox_model_refusals_total``."""
    reason = exc.reason if isinstance(exc, TrustError) else getattr(exc, "reason", "other")
    refusals.labels(reason=str(reason)).inc()


def registry_engine(database_url: str) -> Engine | None:
    """An engine on the registry's database, or None when it cannot be reached or has no
    registry (the service then serves from its local BentoML store alone)."""
    from sqlalchemy import inspect

    from scorebox.db import MODELS_TABLE

    engine = make_engine(database_url, connect_timeout=3, application_name="scorebox-service")
    try:
        with engine.connect() as conn:
            if inspect(conn).has_table(MODELS_TABLE):
                return engine
    except DBAPIError as exc:
        log.warning("model registry unreachable, serving from the local store: %s", exc.orig)
    engine.dispose()
    return None


def check_name(tag: str, name: str, ref: str | None = None) -> None:
    """Refuse version ``tag`` unless it is a version of model ``name`` (an alias can point at
    any model's version); ``ref`` is what named it."""
    if tag.partition(":")[0] != name:
        named = f"{ref} names {tag}, which" if ref and ref != tag else tag
        raise ModelError(f"{named} is not a version of {name}, the model this service serves")


def load_predictor(catalog: Catalog, tag: str, name: str) -> Predictor:
    """Version ``tag`` loaded and checked: its signature by a trusted key, its files the signed
    ones (imported from the registry when the local store lacks them), its metadata readable,
    and one prediction of a row of missing values that gives one finite answer."""
    check_name(tag, name)
    version = catalog.local(tag)
    try:
        predictor = Predictor.load(version)
    except TrustError:
        catalog.discard(tag)  # an import damaged on disk: imported again next time
        raise
    with threadpool_limits(1):
        answers = predictor.answers(np.full((1, len(predictor.features)), np.nan))
    value = answers[0]["prediction"] if len(answers) == 1 else None
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        raise ModelError(f"model {tag}: a smoke prediction gave {answers!r}")
    return predictor


@dataclass(frozen=True)
class Serving:
    """One loaded version and the batching of its calls; swapped whole on a switch."""

    predictor: Predictor
    coalesce: Coalescer[dict[str, Any]]
    online: OnlineDrift | None  # drift of its /predict traffic, when the model has a profile


# An absolute file path in a message: a slash after a space, a quote or the start, then a name.
_PATH = re.compile(r"(?<![\w.:/~-])/[^\s/'\"]+(?:/[^\s/'\"]*)*")


def public(message: str) -> str:
    """``message`` as a client may read it: file paths of this machine left out (the log keeps
    the whole message)."""
    return _PATH.sub("<path>", message)


def _reason(exc: BaseException) -> str:
    """An error on one line: a database error's own first line, not the statement it ran."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        text = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else repr(exc.orig)
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:500]


class Following:
    """Polls the registry for where the served reference points and switches to it when the new
    version loads, passes its checks and can answer the same callers (same task, features and
    classes). A refused version is tried again after ``retry`` seconds (it may be repaired)."""

    def __init__(
        self,
        catalog: Catalog,
        resolved: Resolved,
        name: str,
        interval: float,
        switch: Callable[[Predictor], None],
        current: Callable[[], Predictor],
        retry: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.ref = resolved.ref
        self.alias = resolved.alias
        self.name = name
        self.interval = interval
        self.switch = switch
        self.current = current
        self.retry = retry
        self.target = resolved.tag
        self.refused: dict[str, float] = {}  # tag -> when it was refused
        self._trust = catalog.trusted.generation
        self.error: str | None = None  # the last problem: a refused version or the registry away
        self.switches = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-follower", daemon=True)

    @staticmethod
    def wanted(resolved: Resolved) -> bool:
        """Whether a reference can move: an alias, or `latest` in the registry."""
        return resolved.alias is not None or resolved.ref == LATEST

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # the poller must outlive any one failure
                error = f"cannot read the model registry: {_reason(exc)}"
                log.warning("%s", error)
                self.error = public(error)

    def check(self) -> None:
        """One poll: switch when the reference points somewhere new, loadable and compatible."""
        self.catalog.trusted.keys()  # read again if the trusted keys changed
        if self.catalog.trusted.generation != self._trust:  # keys rotated: try refusals again
            self._trust = self.catalog.trusted.generation
            self.refused.clear()
        resolved = self.catalog.resolve(self.name, self.ref)
        if self.alias is not None and resolved.alias is None:
            self.error = f"alias {self.alias} no longer exists; still serving {self.target}"
            return
        tag = resolved.tag
        if tag == self.target:
            self.refused.clear()  # moved back: a refused version may be tried again at once
            self.error = None  # and the registry answers again
            return
        refused_at = self.refused.get(tag)
        if refused_at is not None and time.monotonic() - refused_at < self.retry:
            return
        started = time.monotonic()
        try:
            predictor = load_predictor(self.catalog, tag, self.name)
            why = incompatibility(self.current().info.to_metadata(), predictor.info.to_metadata())
            if why is not None:
                refused = ModelError(
                    f"{why}, so this service's callers would break; restart the service to serve it"
                )
                refused.reason = "incompatible"  # type: ignore[attr-defined]
                raise refused
        except DBAPIError:
            raise  # the registry away: said by _run, tried again next poll
        except Exception as exc:
            count_refusal(exc)
            self.refused[tag] = time.monotonic()
            error = f"refused {tag}, kept serving {self.target}: {_reason(exc)}"
            log.error("%s (tried again in %.0f s)", error, self.retry)
            self.error = public(error)  # shown by /v1/model
            return
        self.switch(predictor)
        log.warning(  # a notable event: the version that answers changed
            "%s now serves %s (was %s; loaded and checked in %.2f s)",
            self.ref,
            tag,
            self.target,
            time.monotonic() - started,
        )
        self.target, self.error = tag, None
        self.refused.pop(tag, None)
        self.switches += 1


class Pinned:
    """Exact versions asked for by batch requests, loaded on demand; the few most recent are
    kept (each is a whole model in memory). Only versions that a queued or running job pinned,
    or that ``allowed`` names, are loaded. A version that cannot be served is remembered for
    ``retry`` seconds, then tried again (it may have been repaired)."""

    def __init__(
        self,
        catalog: Catalog,
        name: str,
        allowed: list[str] | None = None,
        keep: int = 3,
        retry: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.name = name
        self.allowed = set(allowed or [])
        self.keep = keep
        self.retry = retry
        self._loaded: OrderedDict[str, Predictor] = OrderedDict()
        self._refused: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._pins: OrderedDict[str, float] = OrderedDict()  # pinned by a job, seen when
        self._trust = catalog.trusted.generation
        self._lock = threading.Lock()
        # One load at a time: requests naming many versions cost one thread, not every core.
        self._loading = threading.Lock()

    def _pinned_by_a_job(self, tag: str) -> bool:
        """Whether a queued or running job pinned ``tag`` (asked at most every few seconds)."""
        if tag in self.allowed:
            return True
        with self._lock:
            known = self._pins.get(tag)
            if known is not None and time.monotonic() - known < PIN_CHECK_SECONDS:
                return True
        engine = self.catalog.engine
        pinned = False
        if engine is not None:
            jobs = Tables.build("predictions").jobs
            with engine.connect() as conn:
                pinned = (
                    conn.execute(
                        select(jobs.c.id)
                        .where(jobs.c.model_tag == tag, jobs.c.status.in_(("queued", "running")))
                        .limit(1)
                    ).first()
                    is not None
                )
        if pinned:
            with self._lock:
                self._pins[tag] = time.monotonic()
                while len(self._pins) > REFUSED_KEPT:
                    self._pins.popitem(last=False)
        return pinned

    def get(self, tag: str) -> Predictor:
        """Version ``tag``, loading it if needed; a ModelError says why it cannot be, a
        RegistryUnavailableError that the registry did not answer."""
        name, _, version = tag.partition(":")
        if name != self.name or not VERSION.match(version):
            raise ModelError(f"{tag[:200]!r} is not a version of {self.name} (name:version)")
        self.catalog.trusted.keys()  # read again if the trusted keys changed
        with self._lock:
            if tag in self._loaded:
                self._loaded.move_to_end(tag)
                return self._loaded[tag]
            if self.catalog.trusted.generation != self._trust:  # keys rotated
                self._trust = self.catalog.trusted.generation
                self._refused.clear()
            refused = self._refused.get(tag)
            if refused is not None and time.monotonic() - refused[1] < self.retry:
                raise ModelError(refused[0])
        try:
            if not self._pinned_by_a_job(tag):
                refusals.labels(reason="not_pinned").inc()
                raise ModelError(
                    f"no queued or running job pinned {tag} and SCOREBOX_SERVICE_PINNABLE does "
                    "not name it"
                )
        except DBAPIError as exc:
            raise RegistryUnavailableError(
                f"the model registry did not answer: {_reason(exc)}"
            ) from None
        with self._loading:
            with self._lock:
                if tag in self._loaded:  # loaded while this request waited
                    return self._loaded[tag]
            try:
                predictor = load_predictor(self.catalog, tag, self.name)
            except DBAPIError as exc:
                raise RegistryUnavailableError(
                    f"the model registry did not answer: {_reason(exc)}"
                ) from None
            except Exception as exc:
                count_refusal(exc)
                reason = _reason(exc)
                log.error("refused to load %s for a request that pinned it: %s", tag, reason)
                with self._lock:
                    self._refused[tag] = (reason, time.monotonic())
                    while len(self._refused) > REFUSED_KEPT:
                        self._refused.popitem(last=False)
                raise ModelError(reason) from None
        with self._lock:
            self._refused.pop(tag, None)
            self._loaded[tag] = predictor
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
        return predictor


def serving(
    predictor: Predictor, max_rows: int, executor: Executor, drift_every: float = 10.0
) -> Serving:
    online = OnlineDrift(predictor.info, every=drift_every) if predictor.info.profile else None
    return Serving(
        predictor, Coalescer(predictor.answers, max_rows=max_rows, executor=executor), online
    )
