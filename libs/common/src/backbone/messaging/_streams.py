"""Streams and KV buckets from the one declarative file, ``deploy/streams.yaml``.

Also home of the one rule that maps a CloudEvent ``type`` to a NATS subject (:func:`subject_for`)
and of the lookup "which stream captures this subject" (:meth:`StreamCatalog.stream_for`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from nats.js import api
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backbone.errors import ConfigError, EventError, NoStreamForSubjectError, StreamError

if TYPE_CHECKING:
    from nats.js import JetStreamContext

STREAMS_FILE_ENV = "BACKBONE_STREAMS_FILE"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Token characters allowed in a subject derived from an event type: no whitespace, no wildcards,
# nothing that NATS treats specially. Types such as "com.github.pull_request.opened" pass as-is.
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_\-:+=@~]+$")


def parse_duration_s(value: float | str) -> float:
    """Seconds from ``90``, ``"90s"``, ``"2m"``, ``"7d"``, ``"250ms"``."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 30s, 2m, 7d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def subject_for(event_type: str) -> str:
    """The NATS subject of an event: its ``type``, which must be a valid concrete subject.

    This is the one place the mapping is written. A type with whitespace, wildcards (``*``,
    ``>``), empty tokens or other special characters is refused rather than rewritten, so that
    two different types can never share a subject.

    Raises:
        EventError: naming the ``type`` attribute when it cannot be a subject.
    """
    tokens = event_type.split(".")
    if not event_type or any(not _SUBJECT_TOKEN.match(token) for token in tokens):
        raise EventError(
            f"event type {event_type!r} cannot be a NATS subject: use dot-separated tokens of "
            "letters, digits and _-:+=@~ (no spaces, no '*' or '>')",
            attribute="type",
        )
    return event_type


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` matches one token, a trailing ``>`` one or more."""
    pattern_tokens = pattern.split(".")
    subject_tokens = subject.split(".")
    for index, token in enumerate(pattern_tokens):
        if token == ">":  # noqa: S105 - a NATS wildcard, not a password
            return len(subject_tokens) > index
        if index >= len(subject_tokens):
            return False
        if token not in ("*", subject_tokens[index]):
            return False
    return len(subject_tokens) == len(pattern_tokens)


def is_subject_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is a valid NATS subject or wildcard pattern (``>`` only last)."""
    tokens = pattern.split(".")
    return not (
        not pattern
        or any(not t for t in tokens)
        or any((">" in t and t != ">") or ("*" in t and t != "*") for t in tokens)
        or (">" in tokens and tokens[-1] != ">")
    )


def subject_covers(captured: str, pattern: str) -> bool:
    """Whether every subject matching ``pattern`` is matched by the stream subject ``captured``."""
    if captured == pattern:
        return True
    # Replace the pattern's wildcards by a concrete token and test capture; '>' needs a token.
    probe = ".".join("x" if token in {"*", ">"} else token for token in pattern.split("."))
    return subject_matches(captured, probe) and (
        not pattern.endswith(">") or captured.endswith(">")
    )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StreamSpec(_Spec):
    """One stream as declared in the streams file."""

    name: str
    subjects: tuple[str, ...]
    description: str | None = None
    max_age_s: float = Field(alias="max_age")
    max_msgs: int = -1
    max_bytes: int = -1
    max_msg_size: int = -1
    duplicate_window_s: float = Field(alias="duplicate_window")
    discard: Literal["old", "new"]
    storage: Literal["file", "memory"]
    replicas: int = Field(ge=1, le=5)

    @field_validator("max_age_s", "duplicate_window_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:  # noqa: ANN401 - raw YAML value
        return parse_duration_s(value)

    def to_config(self, *, replicas: int | None = None) -> api.StreamConfig:
        """The nats-py stream configuration."""
        return api.StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            max_age=self.max_age_s,
            max_msgs=self.max_msgs,
            max_bytes=self.max_bytes,
            max_msg_size=self.max_msg_size,
            duplicate_window=self.duplicate_window_s,
            discard=api.DiscardPolicy(self.discard),
            storage=api.StorageType(self.storage),
            num_replicas=replicas or self.replicas,
            retention=api.RetentionPolicy.LIMITS,
        )


class BucketSpec(_Spec):
    """One JetStream key-value bucket."""

    bucket: str
    description: str | None = None
    history: int = Field(default=1, ge=1, le=64)
    ttl_s: float | None = Field(default=None, alias="ttl")
    storage: Literal["file", "memory"] = "file"
    replicas: int = Field(default=1, ge=1, le=5)

    @field_validator("ttl_s", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:  # noqa: ANN401 - raw YAML value
        return None if value is None else parse_duration_s(value)

    def to_config(self, *, replicas: int | None = None) -> api.KeyValueConfig:
        """The nats-py key-value configuration."""
        return api.KeyValueConfig(
            bucket=self.bucket,
            description=self.description,
            history=self.history,
            ttl=self.ttl_s,
            storage=api.StorageType(self.storage),
            replicas=replicas or self.replicas,
        )


@dataclass(frozen=True)
class StreamCatalog:
    """All declared streams and buckets, with subject lookup."""

    streams: tuple[StreamSpec, ...]
    buckets: tuple[BucketSpec, ...] = ()
    source: Path | None = None
    _cache: dict[str, StreamSpec | None] = field(default_factory=dict, compare=False, repr=False)

    def stream_for(self, subject: str) -> StreamSpec:
        """The stream that captures ``subject``.

        Raises:
            NoStreamForSubjectError: when no declared stream captures it.
        """
        try:
            found = self._cache[subject]
        except KeyError:
            found = next(
                (s for s in self.streams if any(subject_matches(p, subject) for p in s.subjects)),
                None,
            )
            if len(self._cache) < 10_000:  # noqa: PLR2004 - bounded memoisation of hot subjects
                self._cache[subject] = found
        if found is None:
            raise NoStreamForSubjectError(subject)
        return found

    def streams_covering(self, pattern: str) -> list[StreamSpec]:
        """The streams that capture every subject of ``pattern`` (a tail reads exactly one)."""
        return [
            spec
            for spec in self.streams
            if any(subject_covers(captured, pattern) for captured in spec.subjects)
        ]

    def stream(self, name: str) -> StreamSpec:
        """The stream named ``name``."""
        for spec in self.streams:
            if spec.name == name:
                return spec
        raise StreamError(f"no stream named {name!r} in {self.source}", stream=name)


def find_streams_file(start: Path | None = None) -> Path:
    """``$BACKBONE_STREAMS_FILE``, else ``deploy/streams.yaml`` in the cwd or a parent of it."""
    env = os.environ.get(STREAMS_FILE_ENV)
    if env:
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "deploy" / "streams.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "deploy/streams.yaml not found from the current directory; set "
        f"{STREAMS_FILE_ENV} to its path",
        variable=STREAMS_FILE_ENV,
    )


def load_catalog(path: Path | None = None) -> StreamCatalog:
    """Read and validate the streams file.

    Raises:
        ConfigError: naming the file and the key at fault.
    """
    path = path or find_streams_file()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", variable=str(path)) from exc
    defaults = raw.get("defaults", {})
    streams: list[StreamSpec] = []
    buckets: list[BucketSpec] = []
    try:
        streams.extend(
            StreamSpec.model_validate({**defaults, **item}) for item in raw.get("streams", [])
        )
        buckets.extend(BucketSpec.model_validate(item) for item in raw.get("key_value", []))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg']}", variable=where) from exc
    names = [s.name for s in streams]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: duplicate stream names in {names}", variable="streams")
    return StreamCatalog(streams=tuple(streams), buckets=tuple(buckets), source=path)


@dataclass(frozen=True)
class ApplyChange:
    """What `apply_streams` did to one stream or bucket."""

    kind: Literal["stream", "kv"]
    name: str
    action: Literal["created", "updated", "unchanged"]
    diff: dict[str, tuple[Any, Any]]


_COMPARED = (
    "subjects",
    "description",
    "max_age",
    "max_msgs",
    "max_bytes",
    "max_msg_size",
    "duplicate_window",
    "discard",
    "storage",
    "num_replicas",
)


def _normalise(value: Any) -> Any:  # noqa: ANN401 - any config value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if hasattr(value, "value"):
        return value.value
    if isinstance(value, list):
        return sorted(value)
    return value


def _diff(current: api.StreamConfig, wanted: api.StreamConfig) -> dict[str, tuple[Any, Any]]:
    changes: dict[str, tuple[Any, Any]] = {}
    for name in _COMPARED:
        old = _normalise(getattr(current, name))
        new = _normalise(getattr(wanted, name))
        if old != new:
            changes[name] = (old, new)
    return changes


async def apply_streams(
    js: JetStreamContext, catalog: StreamCatalog, *, replicas: int | None = None
) -> list[ApplyChange]:
    """Create or update every stream and bucket of ``catalog``; idempotent.

    Storage type and replicas of an existing stream cannot always be changed in place; the server's
    error is raised as a :class:`StreamError` naming the stream.
    """
    changes: list[ApplyChange] = []
    for spec in catalog.streams:
        wanted = spec.to_config(replicas=replicas)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await _call(js.add_stream(wanted), spec.name)
            changes.append(ApplyChange("stream", spec.name, "created", {}))
            continue
        diff = _diff(info.config, wanted)
        if diff:
            await _call(js.update_stream(wanted), spec.name)
            changes.append(ApplyChange("stream", spec.name, "updated", diff))
        else:
            changes.append(ApplyChange("stream", spec.name, "unchanged", {}))
    for bucket in catalog.buckets:
        stream_name = f"KV_{bucket.bucket}"
        try:
            await js.stream_info(stream_name)
        except NotFoundError:
            await _call(js.create_key_value(bucket.to_config(replicas=replicas)), stream_name)
            changes.append(ApplyChange("kv", bucket.bucket, "created", {}))
        else:
            changes.append(ApplyChange("kv", bucket.bucket, "unchanged", {}))
    return changes


async def _call(awaitable: Any, stream: str) -> Any:  # noqa: ANN401 - passthrough of nats-py results
    from nats.js.errors import APIError  # noqa: PLC0415

    try:
        return await awaitable
    except APIError as exc:
        raise StreamError(f"stream {stream}: {exc.description or exc}", stream=stream) from exc
