"""``python -m pacing.cli``, e.g. where the ``pacing`` script is not on PATH.

``pacing up`` starts its metrics exporter this way (:mod:`pacing.cli.localstack`).
"""

from __future__ import annotations

from pacing.cli.group import main

if __name__ == "__main__":
    main()
