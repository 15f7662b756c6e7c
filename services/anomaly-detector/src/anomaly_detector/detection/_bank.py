"""A bounded set of per-series detectors keyed by (entity, metric)."""

from __future__ import annotations

from collections import OrderedDict

from anomaly_detector.detection._errors import DetectorConfigError
from anomaly_detector.detection._series import Score, SeriesConfig, SeriesDetector

SeriesKey = tuple[str, str]


class DetectorBank:
    """One :class:`SeriesDetector` per ``(entity, metric)``, at most ``max_series`` of them.

    When full, the least recently updated series is dropped (its detector starts afresh if the
    series comes back), so memory stays bounded whatever the cardinality of the input.
    """

    def __init__(self, config: SeriesConfig | None = None, *, max_series: int = 5_000) -> None:
        if max_series < 1:
            raise DetectorConfigError("max_series must be >= 1", variable="max_series")
        self.config = config or SeriesConfig()
        self.max_series = max_series
        self._detectors: OrderedDict[SeriesKey, SeriesDetector] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._detectors)

    def __contains__(self, key: object) -> bool:
        return key in self._detectors

    def update(self, entity: str, metric: str, timestamp: float, value: float) -> Score:
        """Score one point of the series ``(entity, metric)`` and learn it."""
        key = (entity, metric)
        det = self._detectors.get(key)
        if det is None:
            det = SeriesDetector(self.config)
            self._detectors[key] = det
            if len(self._detectors) > self.max_series:
                self._detectors.popitem(last=False)
                self.evicted += 1
        else:
            self._detectors.move_to_end(key)
        return det.update(timestamp, value)

    def keys(self) -> list[SeriesKey]:
        """The tracked series, least recently updated first."""
        return list(self._detectors)
