"""PII detection and masking inside event ``data``, by policy per event type prefix.

Modes: ``off`` (nothing scanned), ``detect`` (count only; the event gets the extension
``piidetected`` = number of string fields holding PII) and ``mask`` (each finding is replaced by
``[REDACTED:<kind>]``; the event gets ``piimasked`` = number of string fields changed). The
policy maps dotted type prefixes to a mode, the longest matching prefix wins
(``{"github": "mask", "github.push": "off"}``), ``default_mode`` applies otherwise.

What is found (each candidate is checked, not just pattern-matched, where a check exists):

==========  =====================================================================
``secret``  JWTs (``eyJ..``.``eyJ..``.sig) and well-known API token formats (GitHub ``ghp_``/
            ``github_pat_``, Slack ``xox?-``, AWS ``AKIA``, Google ``AIza``, GitLab ``glpat-``,
            OpenAI/Stripe-style ``sk-``/``sk_live_``)
``email``   addresses ``local@domain.tld``
``iban``    IBANs, accepted only when the ISO 13616 mod-97 check passes
``card``    13-19 digit card numbers (spaces/dashes allowed), accepted only when Luhn passes
``phone``   international (``+`` and 7-15 digits) or North American ``(555) 123-4567`` numbers
``ip``      IPv4 and IPv6 addresses that :mod:`ipaddress` accepts
==========  =====================================================================

Only string values are scanned (keys and numbers are not), inside objects and arrays at any depth.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from event_gateway.settings import PiiMode

MASKED_EXTENSION: Final = "piimasked"
DETECTED_EXTENSION: Final = "piidetected"

_IBAN_LENGTH = (15, 34)
_CARD_LENGTH = (13, 19)
_PHONE_DIGITS = (7, 15)


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:  # noqa: PLR2004 - Luhn: subtract 9 from doubled digits above 9
                value -= 9
        total += value
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    """Whether ``text`` (spaces allowed) is an IBAN with a valid ISO 13616 mod-97 checksum."""
    compact = text.replace(" ", "").upper()
    if not _IBAN_LENGTH[0] <= len(compact) <= _IBAN_LENGTH[1]:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _card_ok(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
    return _CARD_LENGTH[0] <= len(digits) <= _CARD_LENGTH[1] and luhn_ok(digits)


def _phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return _PHONE_DIGITS[0] <= len(digits) <= _PHONE_DIGITS[1]


def _ip_ok(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _always(_: str) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool]


# Order matters: secrets before e-mail (a JWT never contains '@', but tokens may contain digit
# runs a card pattern would see), IBAN before card and phone (its digits would match them).
_DETECTORS: Final = (
    _Detector(
        "secret",
        re.compile(
            r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}"
            r"|\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"
            r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
            r"|glpat-[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9_-]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,})"
        ),
        _always,
    ),
    _Detector(
        "email",
        re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        _always,
    ),
    _Detector(
        "iban",
        re.compile(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
        iban_ok,
    ),
    _Detector("card", re.compile(r"(?<![\d.])\d(?:[ -]?\d){12,18}(?![\d.])"), _card_ok),
    _Detector(
        "phone",
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?!\d)"
            r"|(?<!\w)\(\d{3}\) ?\d{3}[ .-]\d{4}(?!\d)"
        ),
        _phone_ok,
    ),
    _Detector(
        "ip",
        re.compile(
            r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"
            r"|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"
        ),
        _ip_ok,
    ),
)
# Strings without any of these characters cannot hold a finding: skip the regexes for them.
_TRIGGER: Final = re.compile(r"[0-9@]")


def scan_text(text: str, *, mask: bool) -> tuple[str, dict[str, int]]:
    """Find PII in one string.

    Returns:
        ``(text, counts)``: the masked text (unchanged when ``mask`` is false) and the number of
        findings per kind.
    """
    counts: dict[str, int] = {}
    if _TRIGGER.search(text) is None:
        return text, counts
    for detector in _DETECTORS:

        def replace(match: re.Match[str], detector: _Detector = detector) -> str:
            found = match.group()
            if not detector.check(found):
                return found
            counts[detector.kind] = counts.get(detector.kind, 0) + 1
            return f"[REDACTED:{detector.kind}]"

        masked = detector.pattern.sub(replace, text)
        if mask:
            text = masked
    return text, counts


@dataclass(slots=True)
class ScanResult:
    """What one scan of an event's data found."""

    data: Any
    fields: int = 0
    """String fields holding at least one finding."""
    kinds: dict[str, int] | None = None
    """Findings per kind."""


def scan_data(data: Any, *, mask: bool) -> ScanResult:  # noqa: ANN401 - any JSON value
    """Scan (and with ``mask`` rewrite) every string value in a JSON value."""
    result = ScanResult(data=None, kinds={})

    def walk(value: Any) -> Any:  # noqa: ANN401 - any JSON value
        if isinstance(value, str):
            new, counts = scan_text(value, mask=mask)
            if counts:
                result.fields += 1
                assert result.kinds is not None  # noqa: S101 - set above
                for kind, count in counts.items():
                    result.kinds[kind] = result.kinds.get(kind, 0) + count
            return new
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    result.data = walk(data)
    return result


class PiiPolicy:
    """Which mode applies to which event type (longest dotted prefix wins).

    Args:
        policy: ``{prefix: mode}``; ``*`` sets the default too.
        default_mode: Mode for types no prefix matches.
    """

    def __init__(self, policy: Mapping[str, PiiMode], *, default_mode: PiiMode = "off") -> None:
        rules = dict(policy)
        self.default_mode: PiiMode = rules.pop("*", default_mode)
        self._rules = {prefix.rstrip("."): mode for prefix, mode in rules.items()}
        self._cache: dict[str, PiiMode] = {}

    @property
    def active(self) -> bool:
        """Whether any type is scanned at all."""
        return self.default_mode != "off" or any(m != "off" for m in self._rules.values())

    def mode_for(self, event_type: str) -> PiiMode:
        """The mode for ``event_type``."""
        cached = self._cache.get(event_type)
        if cached is not None:
            return cached
        mode = self.default_mode
        prefix = event_type
        while True:
            if prefix in self._rules:
                mode = self._rules[prefix]
                break
            if "." not in prefix:
                break
            prefix = prefix.rsplit(".", 1)[0]
        if len(self._cache) < 10_000:  # noqa: PLR2004 - bounded memo of hot types
            self._cache[event_type] = mode
        return mode
