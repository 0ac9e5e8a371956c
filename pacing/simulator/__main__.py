"""``python -m pacing.simulator --targets N --port P``: run the simulator in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from pacing.simulator import SimulatorConfig, serve_forever


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m pacing.simulator",
        description="Serve the contact-centre simulator (Stat Server, engagement, OAuth).",
    )
    defaults = SimulatorConfig()
    parser.add_argument("--targets", type=int, default=defaults.targets)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token", default=defaults.token, help="static bearer token")
    parser.add_argument("--client-id", default=defaults.client_id)
    parser.add_argument("--client-secret", default=defaults.client_secret)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.targets < 0:
        parser.error("--targets must be >= 0.")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    config = SimulatorConfig(
        targets=args.targets,
        seed=args.seed,
        host=args.host,
        port=args.port,
        token=args.token or None,
        client_id=args.client_id,
        client_secret=args.client_secret,
    )
    serve_forever(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
