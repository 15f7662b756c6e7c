"""API keys: stored as SHA-256 hashes, compared in constant time, scoped by event type prefix.

Keys come from three places, merged: ``BACKBONE_GATEWAY__API_KEYS_FILE`` (YAML, below),
``BACKBONE_GATEWAY__API_KEYS`` (the same list as JSON) and ``BACKBONE_GATEWAY__DEV_KEY_FILE``
(the plaintext development key ``backbone up`` writes to ``.backbone/gateway-dev-key``; it is
hashed when loaded and has every scope)::

    # api-keys.yaml
    keys:
      - name: mcp-servers
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        scopes: [mcp]          # mcp and mcp.* types
      - name: ci
        sha256: ...
        scopes: ["*"]

Clients send ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``). The presented key is
hashed and compared with *every* configured hash using :func:`hmac.compare_digest`, so the time
taken does not depend on which key (if any) matched or on how much of it did.

Unauthenticated mode (``BACKBONE_GATEWAY__ALLOW_UNAUTHENTICATED=true``) is refused at start
unless the server is bound to a loopback address, and even then requests from a non-loopback
peer are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import yaml
from pydantic import ValidationError

from backbone.errors import ConfigError
from event_gateway.problems import ProblemError
from event_gateway.settings import ApiKeyEntry

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from event_gateway.settings import GatewaySettings

_log = logging.getLogger(__name__)

ALL_SCOPES: Final = "*"
DEV_KEY_NAME: Final = "dev"
ANONYMOUS: Final = "anonymous"
_BEARER: Final = "bearer "
_DIGEST_CACHE_MAX: Final = 1024


def hash_key(key: str) -> bytes:
    """SHA-256 digest of a plaintext key (what the key files store, in hex)."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def scope_allows(scopes: Iterable[str], event_type: str) -> bool:
    """Whether a scope list lets a key publish ``event_type``.

    A scope is ``*`` or a dotted prefix: ``mcp`` allows ``mcp`` and ``mcp.server.error`` but
    not ``mcpx.y``; a scope ending in ``.`` (``mcp.``) is read the same way.
    """
    for scope in scopes:
        if scope == ALL_SCOPES:
            return True
        prefix = scope.rstrip(".")
        if event_type == prefix or event_type.startswith(prefix + "."):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: the key's name and what it may publish."""

    name: str
    scopes: tuple[str, ...]

    def allows(self, event_type: str) -> bool:
        """Whether this principal may publish ``event_type``."""
        return scope_allows(self.scopes, event_type)


@dataclass(frozen=True, slots=True)
class _StoredKey:
    digest: bytes
    principal: Principal


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class KeyStore:
    """The configured keys; :meth:`authenticate` turns a request's headers into a principal.

    Args:
        entries: Configured keys (hashes).
        dev_key: A plaintext key with every scope (the local stack's development key).
        allow_unauthenticated: Accept requests without a key (loopback only, see the module).
    """

    def __init__(
        self,
        entries: Iterable[ApiKeyEntry] = (),
        *,
        dev_key: str | None = None,
        allow_unauthenticated: bool = False,
    ) -> None:
        keys = [
            _StoredKey(bytes.fromhex(entry.sha256), Principal(entry.name, tuple(entry.scopes)))
            for entry in entries
        ]
        if dev_key:
            keys.append(_StoredKey(hash_key(dev_key), Principal(DEV_KEY_NAME, (ALL_SCOPES,))))
        self._keys = tuple(keys)
        self.allow_unauthenticated = allow_unauthenticated
        self._anonymous = Principal(ANONYMOUS, (ALL_SCOPES,))
        # Valid presented key -> its SHA-256: clients send the same key on every request. Only
        # the hashing is skipped; the constant-time comparison with every stored digest still
        # runs. Wrong keys are never remembered (no growth, no plaintext kept from a flood), and
        # the answer (401 or not) already tells whether a key is valid.
        self._digests: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> KeyStore:
        """Load keys from the file, the environment and the dev key file.

        Raises:
            ConfigError: unreadable or invalid key file, or unauthenticated mode on a
                non-loopback address, naming the variable.
        """
        section = settings.gateway
        entries: list[ApiKeyEntry] = list(section.api_keys)
        if section.api_keys_file is not None:
            entries.extend(_read_keys_file(section.api_keys_file))
        dev_key = None
        if section.dev_key_file is not None:
            dev_key = _read_dev_key(section.dev_key_file)
        if section.allow_unauthenticated and not is_loopback_host(settings.http.host):
            raise ConfigError(
                "unauthenticated mode is only allowed when BACKBONE_HTTP__HOST is a loopback "
                f"address, not {settings.http.host!r}",
                variable="BACKBONE_GATEWAY__ALLOW_UNAUTHENTICATED",
            )
        store = cls(entries, dev_key=dev_key, allow_unauthenticated=section.allow_unauthenticated)
        if not store._keys and not store.allow_unauthenticated:
            _log.warning(
                "no API keys configured: every event request will be refused with 401 "
                "(set BACKBONE_GATEWAY__API_KEYS_FILE or BACKBONE_GATEWAY__DEV_KEY_FILE)"
            )
        return store

    def _match(self, presented: str) -> Principal | None:
        cached = self._digests.get(presented)
        digest = hash_key(presented) if cached is None else cached
        found: Principal | None = None
        # Compare against every key, without stopping early: the time taken does not tell
        # which key matched or whether one did.
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key.principal
        if found is not None and cached is None:
            if len(self._digests) >= _DIGEST_CACHE_MAX:
                self._digests.clear()
            self._digests[presented] = digest
        return found

    def authenticate(
        self, authorization: str | None, api_key: str | None, client_host: str | None
    ) -> Principal:
        """The principal behind a request.

        Args:
            authorization: The ``Authorization`` header (``Bearer <key>``).
            api_key: The ``X-API-Key`` header.
            client_host: The peer address (unauthenticated mode serves loopback peers only).

        Raises:
            ProblemError: 401 when no valid key is presented (and anonymous access is not allowed).
        """
        presented = api_key
        if authorization is not None:
            if authorization[:7].lower() != _BEARER:
                raise ProblemError(
                    401,
                    "unauthorized",
                    "Authorization must be 'Bearer <api key>'",
                    attribute="authorization",
                )
            presented = authorization[7:].strip()
        if presented:
            principal = self._match(presented)
            if principal is not None:
                return principal
            raise ProblemError(401, "unauthorized", "invalid API key", attribute="authorization")
        if self.allow_unauthenticated and client_host is not None and is_loopback_host(client_host):
            return self._anonymous
        raise ProblemError(
            401,
            "unauthorized",
            "an API key is required: send 'Authorization: Bearer <key>'",
            attribute="authorization",
        )


def _read_keys_file(path: Path) -> list[ApiKeyEntry]:
    variable = "BACKBONE_GATEWAY__API_KEYS_FILE"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read API keys file {path}: {exc}", variable=variable) from exc
    items = raw.get("keys", []) if isinstance(raw, dict) else raw
    if not isinstance(items, list):
        raise ConfigError(f"{path}: 'keys' must be a list", variable=variable)
    entries: list[ApiKeyEntry] = []
    for index, item in enumerate(items):
        try:
            entries.append(ApiKeyEntry.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"{path}: keys[{index}].{where}: {first['msg']}", variable=variable
            ) from exc
    return entries


def _read_dev_key(path: Path) -> str:
    variable = "BACKBONE_GATEWAY__DEV_KEY_FILE"
    try:
        mode = path.stat().st_mode
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read dev key file {path}: {exc}", variable=variable) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("dev key file %s is readable by others; expected mode 0600", path)
    if not key or len(key.split()) != 1:
        raise ConfigError(f"dev key file {path} must hold one key", variable=variable)
    return key
