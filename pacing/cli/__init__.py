"""``pacing``: the operators' command line.

:mod:`pacing.cli.group` holds the ``pacing`` group and attaches one module's commands per
group: :mod:`~pacing.cli.up` (``up``, ``simulate``), :mod:`~pacing.cli.observe` (``status``,
``exporter``), :mod:`~pacing.cli.db`, :mod:`~pacing.cli.targets` and
:mod:`~pacing.cli.history` (``cycles``, ``history``, ``channels``, ``leaders``), with the
helpers they share (and the exit codes) in :mod:`pacing.cli._common`. ``pacing evaluate``
lives in :mod:`pacing.evaluation.command`, the local stack of ``pacing up`` in
:mod:`pacing.cli.localstack`. The console script ``pacing`` is :func:`main`.
"""

from __future__ import annotations

from pacing.cli.group import main

__all__ = ["main"]
