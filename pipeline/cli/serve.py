"""``python -m pipeline serve``: start the dashboard with the address the configuration asks for.

Loopback (127.0.0.1) unless the classroom setting is on (``KAPPALAB_NETWORK=1``), then every
interface (0.0.0.0). Network mode without ``KAPPALAB_PRESENTER_PASSWORD`` refuses to start:
one sentence on stderr, exit status 2. The Procfile runs this command, so a PaaS deployment
follows the same rule; the process becomes Streamlit itself (``exec``), so signals and the
exit status are Streamlit's.
"""
from __future__ import annotations

import argparse
import os
import sys

from pipeline.cli.support import CliError
from pipeline.contracts.config import PROJECT_ROOT, Config

LOOPBACK = "127.0.0.1"
EVERY_INTERFACE = "0.0.0.0"


def add_serve_parser(sub) -> None:
    sv = sub.add_parser("serve", help="run the dashboard: 127.0.0.1, or the network with "
                        "KAPPALAB_NETWORK=1 and a presenter password")
    sv.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8501),
                    help="port (default: $PORT, else 8501)")
    sv.add_argument("--dry-run", action="store_true",
                    help="print the Streamlit command instead of running it")
    sv.set_defaults(func=cmd_serve)


def serve_command(config: Config, port: int) -> list[str]:
    """The ``streamlit run`` command line for ``config`` (raises :class:`CliError` with the
    refusal sentence in network mode without a password)."""
    refusal = config.network_refusal()
    if refusal:
        raise CliError(refusal)
    address = EVERY_INTERFACE if config.network else LOOPBACK
    return [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "app.py"),
            "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false"]


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    command = serve_command(config, args.port)
    if args.dry_run:
        print(" ".join(command))
        return 0
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached
