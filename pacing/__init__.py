"""Agent Pacing Service: the domain (settings, algorithms, clients, history, simulator, CLI).

This package never imports Celery; the ``tasks`` package wraps it.
"""

__version__ = "0.1.0"
