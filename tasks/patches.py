"""Fixes for Celery 5.7 / kombu 5.7 that keep a worker alive through a broker connection loss.

Each patch gives an upstream caller the exception it already handles where the installed release
raises another one; both stop the worker otherwise ("Unrecoverable error"). kombu 5.7.0 and
celery 5.7.0 are the newest releases. :func:`apply` installs them (once; :mod:`tasks.app` calls
it on import, so the ``celery worker`` process has them before its pool forks);
tests/reliability/test_broker_connection_loss.py reproduces each race with and without them.

* :func:`_closed_channels_raise_connection_errors`: the restore and the acknowledgement on the
  channel of a lost connection (kombu's ``Channel._connparams``).
* :func:`_untracked_pool_processes_are_skipped`: the pool's registration with the event loop of
  a new connection, while it still holds a process whose exit it has seen
  (celery's ``iterate_file_descriptors_safely``).
"""

from __future__ import annotations

import functools
from typing import Any


def apply() -> None:
    """Install every patch of this module (a second call changes nothing)."""
    _closed_channels_raise_connection_errors()
    _untracked_pool_processes_are_skipped()


def _closed_channels_raise_connection_errors() -> None:
    """Keep a worker alive through the restores and acks that follow a broker connection loss.

    On a connection error Celery 5.7's consumer collects the broker connection, which detaches its
    transport, then closes it (celery/celery#10242, the fix of celery/celery#9705). A channel whose
    first close stopped at its in-flight BRPOP is closed again by that ``close()`` and restores its
    unacknowledged messages through the detached transport; a task that ends after the loss is
    acked (or rejected) through the same dead channel. Both build a connection pool in
    ``Channel._connparams``, where kombu 5.7 raises ``AttributeError`` ('NoneType' object has no
    attribute 'hostname' / 'client', as in celery/kombu#582) instead of a connection error: neither
    ``kombu.common.ignore_errors`` (the close) nor ``Message.ack_log_error`` (the ack) catches it,
    and the worker stops. celery 5.6.3 dies earlier, in the cancel of running tasks
    (celery/celery#10382).

    A connection error is what both callers expect, as kombu already does for a stale KeyError after
    a broker restart (celery/kombu#2582): the restore is skipped, the ack is logged ("Couldn't
    ack"), and the message waits in Redis's unacked index for the visibility timeout (by then the
    cycle's tasks have expired; the history tasks are idempotent).
    """
    import redis.exceptions  # noqa: PLC0415 - only for this patch
    from kombu.transport import redis as kombu_redis  # noqa: PLC0415

    connparams: Any = kombu_redis.Channel._connparams
    if getattr(connparams, "_pacing_patched", False):
        return

    @functools.wraps(connparams)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the channel's connection was closed")
        return connparams(self, *args, **kwargs)

    _connparams._pacing_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]


def _untracked_pool_processes_are_skipped() -> None:
    """Keep a worker alive when its pool re-registers a process whose exit it has already seen.

    The prefork pool watches each process's sentinel (a pipe the process holds open until it
    exits). When the sentinel reads as closed, ``AsynPool._event_process_exit`` stops watching it
    (``proc._sentinel_poll = None``) and reaps the pool; a process that has closed its files but is
    not a zombie yet cannot be reaped, so it stays in the pool, unwatched, until the next reaping.
    A connection loss in that instant leaves it there too (the consumer's restart reaps again, in
    ``AsynPool.flush``, only a moment later), and the reconnect runs
    ``AsynPool.register_with_event_loop``, which watches every process of the pool again and hands
    that process's ``None`` sentinel to ``hub.add_reader``. A Redis restart brings the two
    together: the consumer terminates the running ``acks_late`` tasks at the loss
    (``worker_cancel_long_running_tasks_on_connection_loss``), their processes end while it
    reconnects, and a connection to a Redis that is still loading its data or going down again is
    lost at once.

    ``iterate_file_descriptors_safely`` skips such a stale descriptor on ``AttributeError``, the
    error kombu 5.6 raised for ``None`` (celery/celery#9250, fixed by celery/celery#10318), but
    kombu 5.7 raises ``ValueError('file descriptor is None')`` instead (celery/kombu#2623, for
    celery/kombu#1649, on the belief that Celery catches ``ValueError`` there): nothing catches it
    and the worker stops. Here a ``None`` descriptor fails with the ``AttributeError`` Celery
    handles: it logs "Encountered error when accessing fd None" (WARNING) and goes on, and the next
    reaping replaces the process. Any other descriptor is passed through untouched.
    """
    from celery.concurrency import asynpool  # noqa: PLC0415 - only for this patch

    iterate: Any = asynpool.iterate_file_descriptors_safely
    if getattr(iterate, "_pacing_patched", False):
        return

    @functools.wraps(iterate)
    def iterate_file_descriptors_safely(
        fds_iter: Any, source_data: Any, hub_method: Any, *args: Any, **kwargs: Any
    ) -> None:
        def call(fd: Any, *call_args: Any, **call_kwargs: Any) -> Any:
            try:
                return hub_method(fd, *call_args, **call_kwargs)
            except ValueError as error:
                if fd is not None:
                    raise
                raise AttributeError(str(error)) from error

        iterate(fds_iter, source_data, call, *args, **kwargs)

    iterate_file_descriptors_safely._pacing_patched = True  # type: ignore[attr-defined]
    asynpool.iterate_file_descriptors_safely = iterate_file_descriptors_safely
