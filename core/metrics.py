"""Process-local counters, gauges and histograms, rendered as Prometheus text."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
Labels = tuple[tuple[str, str], ...]


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _fmt(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in pairs)
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
        self.histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.counters[name][_labels(labels)] += amount

    def gauge(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self.gauges[name][_labels(labels)] = value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        with self._lock:
            # buckets..., +Inf count, sum
            row = self.histograms[name].setdefault(_labels(labels), [0.0] * (len(_BUCKETS) + 2))
            row[bisect.bisect_left(_BUCKETS, seconds)] += 1
            row[-1] += seconds

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for kind, scalars in (("counter", self.counters), ("gauge", self.gauges)):
                for name, series in sorted(scalars.items()):
                    lines.append(f"# TYPE {name} {kind}")
                    lines += [f"{name}{_fmt(lab)} {value:g}" for lab, value in series.items()]
            for name, rows in sorted(self.histograms.items()):
                lines.append(f"# TYPE {name} histogram")
                for lab, row in rows.items():
                    cumulative = 0.0
                    for bound, count in zip(_BUCKETS, row):
                        cumulative += count
                        lines.append(f"{name}_bucket{_fmt(lab, (('le', f'{bound:g}'),))} {cumulative:g}")
                    cumulative += row[len(_BUCKETS)]
                    lines.append(f"{name}_bucket{_fmt(lab, (('le', '+Inf'),))} {cumulative:g}")
                    lines.append(f"{name}_sum{_fmt(lab)} {row[-1]:g}")
                    lines.append(f"{name}_count{_fmt(lab)} {cumulative:g}")
        return "\n".join(lines) + "\n"
