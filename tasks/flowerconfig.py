"""Flower's config file for this service, executed by ``celery -A tasks flower``.

Flower executes it (it is not imported): every global named like a Flower option sets that
option. The rules are in :mod:`tasks.flower_settings`, which also makes this file Flower's
default. Don't bind names of Flower or tornado options here (``logging``, ``port``, ...): they
would be taken as option values.
"""

from tornado.options import options as _given

from tasks.flower_settings import options_or_exit as _options_or_exit

globals().update(_options_or_exit(_given))
