"""The component model: factories, components and the consumer interface.

Modelled on the upstream collector. Each receiver, processor, connector, exporter and
extension type is a *factory* (type name, typed config class, constructor) published
under an entry point group (``otelkit.receivers`` ...); built-ins register exactly as a
third-party plugin does. Components have ``start()`` and ``shutdown()``; shutdown
drains what the component holds.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from otelkit.collector.pdata.signals import Payload, Signal

if TYPE_CHECKING:
    from otelkit.collector.runtime.telemetry import SelfTelemetry


class Kind(StrEnum):
    RECEIVER = "receiver"
    PROCESSOR = "processor"
    CONNECTOR = "connector"
    EXPORTER = "exporter"
    EXTENSION = "extension"

    @property
    def section(self) -> str:
        """The top-level key of this kind in the configuration file."""
        return f"{self.value}s"

    @property
    def entry_point_group(self) -> str:
        return f"otelkit.{self.section}"


@dataclass(frozen=True, order=True)
class ComponentID:
    """``type`` or ``type/name``, as upstream."""

    type: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ComponentID:
        type_, _, name = text.strip().partition("/")
        if not type_ or ("/" in text and not name):
            raise ValueError(f"{text!r} is not a component ID: expected 'type' or 'type/name'")
        return cls(type_, name)

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


class ComponentConfig(BaseModel):
    """Base of every component's config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@runtime_checkable
class ChecksSignals(Protocol):
    """A component config valid for some of its factory's signals only (``loadbalancing``
    with ``routing_key: traceID`` cannot route metrics): a config error, not a runtime one."""

    def signal_problem(self, signal: Signal) -> str | None: ...


class Consumer(Protocol):
    """Takes one batch. Raises RetryableError to push back, PermanentError to refuse."""

    async def consume(self, payload: Payload) -> None: ...


class Status(StrEnum):
    STARTING = "starting"
    OK = "ok"
    RECOVERABLE_ERROR = "recoverable_error"
    PERMANENT_ERROR = "permanent_error"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Host(Protocol):
    """What a running component may ask of the collector that runs it."""

    def report_status(self, component: str, status: Status, message: str = "") -> None: ...

    def component_statuses(self) -> Mapping[str, tuple[Status, str]]: ...

    def is_ready(self) -> bool: ...

    def get_extension(self, component_id: ComponentID) -> Component | None: ...

    def held_bytes(self) -> int:
        """Memory the data held by the running components takes (see ``runtime.memory``)."""
        ...

    def set_refusing(self, component: str, reason: str | None) -> None:
        """``component`` refuses all data for ``reason`` (None: it accepts again)."""
        ...

    def refusals(self) -> Mapping[str, str]:
        """Components refusing all data now, with why: readiness reports them."""
        ...


@dataclass(frozen=True)
class WorkerRole:
    """This process is worker ``index`` of ``count`` under ``otelkit collector run --workers``.

    Receivers then share their ports with the other workers (``SO_REUSEPORT``), and
    endpoints that must show one view for the whole collector (a scrape endpoint, the
    health check) are served by the supervisor, which asks each worker for its part."""

    index: int
    count: int


class PeerLink(Protocol):
    """How a component in one worker of ``--workers N`` asks the same component (the
    same label, so the same pipeline) in another worker: for state that must be one for
    the whole collector, such as a budget's percentile window."""

    def ask(self, worker: int, body: bytes) -> Awaitable[bytes]:
        """The other worker's :meth:`AnswersPeers.answer_peer` of ``body``; raises
        ``RetryableError`` when that worker cannot answer now (gone, starting, stopping)."""
        ...


@runtime_checkable
class AnswersPeers(Protocol):
    """A component that answers its counterparts in the other workers (see PeerLink)."""

    async def answer_peer(self, body: bytes) -> bytes: ...


@dataclass
class CreateSettings:
    """Passed to every factory: who the component is and where it reports."""

    id: ComponentID
    kind: Kind
    telemetry: SelfTelemetry
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("otelkit"))
    durable_downstream: tuple[str, ...] = ()
    """Processors: the exporters of this pipeline that acknowledge only once data is on
    disk or delivered. A processor that would answer a sender before passing the data on
    (``batch``) waits for them instead, so their promise reaches the sender."""
    worker: WorkerRole | None = None
    """Set in a worker process of ``--workers N``; None in a single-process collector."""
    peers: PeerLink | None = None
    """Set with ``worker``: asks this component's counterparts in the other workers."""

    @property
    def label(self) -> str:
        """``kind/id`` as shown in logs and health output (``exporter/otlp/tier2``)."""
        return f"{self.kind.value}/{self.id}"


class Component:
    """Base of all components. Subclasses override what they need."""

    # Whether ``consume`` may change the batch it is given (upstream's
    # ``Capabilities.MutatesData``). A consumer that only reads the batch, and keeps
    # nothing of it once ``consume`` returns, says False: a fan-out then hands it the
    # shared batch instead of a copy.
    mutates_data: ClassVar[bool] = True

    async def start(self, host: Host) -> None:
        """Called once before data flows; raise to stop the collector from starting."""

    async def shutdown(self) -> None:
        """Stop taking data, flush or drain what is held, release resources."""


class Receiver(Component):
    """Takes data from outside and hands it to the consumers of each signal."""


class Processor(Component):
    """One stage of one pipeline: consumes a batch and passes it on to ``next``."""

    async def consume(self, payload: Payload) -> None:
        raise NotImplementedError


class Exporter(Component):
    """Sends data out of the collector. One instance serves every pipeline that names it."""

    async def consume(self, payload: Payload) -> None:
        raise NotImplementedError

    @property
    def acknowledges_durably(self) -> bool:
        """Whether ``consume`` returns only once the data is on disk or delivered."""
        return False


class Connector(Component):
    """An exporter in one pipeline and a receiver in another (traces -> metrics, ...)."""

    async def consume(self, payload: Payload) -> None:
        raise NotImplementedError


class Extension(Component):
    """Runs beside the pipelines (health checks, storage)."""


C = TypeVar("C", bound=ComponentConfig)

ReceiverCreate = Callable[[CreateSettings, Any, Mapping[Signal, Consumer]], Receiver]
ProcessorCreate = Callable[[CreateSettings, Any, Signal, Consumer], Processor]
ExporterCreate = Callable[[CreateSettings, Any, frozenset[Signal]], Exporter]
ConnectorCreate = Callable[[CreateSettings, Any, Signal, Signal, Consumer], Connector]
ExtensionCreate = Callable[[CreateSettings, Any], Extension]


@dataclass(frozen=True)
class Factory(Generic[C]):
    """What an entry point publishes: a type name, a config class and a constructor.

    ``signals`` lists the signals a receiver, processor or exporter handles;
    ``connects`` the (source, target) pairs a connector joins.
    """

    type: str
    kind: Kind
    config_class: builtins.type[C]
    create: Callable[..., Component]
    signals: frozenset[Signal] = frozenset(Signal)
    connects: frozenset[tuple[Signal, Signal]] = frozenset()
    description: str = ""


def receiver_factory(
    type: str, config_class: type[C], create: ReceiverCreate, signals: frozenset[Signal]
) -> Factory[C]:
    return Factory(type, Kind.RECEIVER, config_class, create, signals)


def processor_factory(
    type: str, config_class: type[C], create: ProcessorCreate, signals: frozenset[Signal]
) -> Factory[C]:
    return Factory(type, Kind.PROCESSOR, config_class, create, signals)


def exporter_factory(
    type: str, config_class: type[C], create: ExporterCreate, signals: frozenset[Signal]
) -> Factory[C]:
    return Factory(type, Kind.EXPORTER, config_class, create, signals)


def connector_factory(
    type: str,
    config_class: type[C],
    create: ConnectorCreate,
    connects: frozenset[tuple[Signal, Signal]],
) -> Factory[C]:
    sources = frozenset(source for source, _ in connects)
    return Factory(type, Kind.CONNECTOR, config_class, create, sources, connects)


def extension_factory(type: str, config_class: type[C], create: ExtensionCreate) -> Factory[C]:
    return Factory(type, Kind.EXTENSION, config_class, create, frozenset())
