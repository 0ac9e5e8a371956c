"""Business metrics for Prometheus, served by ``pacing exporter``.

* :mod:`pacing.metrics.collector` — :class:`PacingCollector`: the cycle events of the Redis
  stream turned into histograms and counters, plus the cluster state read at scrape time;
* :mod:`pacing.metrics.server` — :func:`serve_metrics`: ``/metrics`` (behind
  :func:`basic_auth` when credentials are set) and ``/healthz``.

The names are re-exported here; the submodules import each other by full path, never this
package.
"""

from __future__ import annotations

from pacing.metrics.collector import STAGES, PacingCollector
from pacing.metrics.server import basic_auth, serve_metrics

__all__ = ["STAGES", "PacingCollector", "basic_auth", "serve_metrics"]
