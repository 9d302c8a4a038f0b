"""`turnout-server`: load the configuration, set up logging, run the node."""

from __future__ import annotations

import logging
import os
import sys

from server.config import DEV_APP, PROG, Config, ConfigError, load_config, secret_flag_warnings

__all__ = ["configure_logging", "main"]


class _TurnoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler main() installs, so calling main() twice does not double log lines."""


def configure_logging(config: Config) -> None:
    """Log to stderr with the node id in every line, at config.log_level."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _TurnoutHandler):
            root.removeHandler(handler)
    handler = _TurnoutHandler(sys.stderr)
    # The node id is baked into the format (several nodes often share one terminal or log
    # collector); node ids cannot contain '%', but escape anyway so the format stays valid.
    node = config.node_id.replace("%", "%%")
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s [{node}] %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())


def main(argv: list[str] | None = None) -> int:
    """Entry point of `turnout-server` and `python -m server`; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    for warning in secret_flag_warnings(args):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    try:
        config = load_config(args, os.environ)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help: argparse has printed it and asks to exit
        return e.code if isinstance(e.code, int) else 0
    configure_logging(config)
    if config.dev:
        logging.getLogger("turnout.node").warning(
            "--dev: development mode%s; never run a production node with --dev",
            ", serving the built-in app whose secret is public" if DEV_APP in config.apps
            else "")
    # Imported here so --help and config errors work without loading the server stack.
    from server.node import run

    exit_code: int = run(config)
    return exit_code
