"""A bounded-memory latency histogram with log-spaced buckets (HDR-like) for percentiles."""

from __future__ import annotations

import math

# Values are bucketed on a geometric grid: bucket i covers [MIN * G**i, MIN * G**(i+1)). With
# G = 1.02 a reported percentile is within ~1 % of the true sample, and the range 1 µs .. 1 h
# needs at most ~1 100 buckets, so memory stays bounded however many samples arrive.
_MIN_VALUE = 1e-6
_MAX_VALUE = 3600.0
_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)
_INV_MIN = 1.0 / _MIN_VALUE
_INV_LOG_GROWTH = 1.0 / _LOG_GROWTH
_MAX_INDEX = math.ceil(math.log(_MAX_VALUE / _MIN_VALUE) / _LOG_GROWTH)


class LogHistogram:
    """Counts samples (seconds) in log-spaced buckets; answers percentiles within ~1 %.

    Memory is bounded by the number of distinct buckets touched (at most ~1 100), never by the
    number of samples. Values below 1 µs count as 1 µs and values above one hour as one hour;
    the exact minimum, maximum, sum and count are kept beside the buckets.
    """

    __slots__ = ("_buckets", "count", "max", "min", "sum")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, value_s: float) -> None:
        """Add one sample, in seconds (negative values count as zero)."""
        # Plain comparisons instead of min()/max(): this runs once per published message.
        value_s = max(value_s, 0.0)
        self.count += 1
        self.sum += value_s
        self.min = min(self.min, value_s)
        self.max = max(self.max, value_s)
        if value_s <= _MIN_VALUE:
            index = 0
        elif value_s >= _MAX_VALUE:
            index = _MAX_INDEX
        else:
            index = int(math.log(value_s * _INV_MIN) * _INV_LOG_GROWTH)
        buckets = self._buckets
        buckets[index] = buckets.get(index, 0) + 1

    def percentile(self, fraction: float) -> float:
        """The value at ``fraction`` (0..1) of the samples, in seconds; 0.0 when empty.

        The answer is the geometric middle of the bucket holding that rank, clamped to the exact
        minimum and maximum so that p0/p100 and single-sample histograms are exact.
        """
        if self.count == 0:
            return 0.0
        fraction = min(max(fraction, 0.0), 1.0)
        # Nearest-rank definition: the smallest sample with at least `fraction` of samples <= it.
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                middle = _MIN_VALUE * math.pow(_GROWTH, index + 0.5)
                return min(max(middle, self.min), self.max)
        return self.max  # pragma: no cover - ranks never exceed the count

    @property
    def mean(self) -> float:
        """The arithmetic mean in seconds; 0.0 when empty."""
        return self.sum / self.count if self.count else 0.0

    @property
    def bucket_count(self) -> int:
        """How many buckets hold samples (the memory actually used)."""
        return len(self._buckets)
