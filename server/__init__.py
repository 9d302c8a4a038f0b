"""turnout's broadcast node: a Pusher-protocol websocket server on trio, clustered over Redis.

Public surface: ``Config``/``load_config`` to configure a node, ``serve_node`` to run one inside
a trio nursery (``node = await nursery.start(serve_node, config)``), ``run`` for a process.

The names are imported on first use, so that ``server.schema`` (the declarative-schema layer the
harness and the trio-free TUI share) can be imported without starting up trio and the node.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import AppConfig as AppConfig
    from .config import Config as Config
    from .config import ConfigError as ConfigError
    from .config import load_config as load_config
    from .node import Node as Node
    from .node import run as run
    from .node import serve_node as serve_node

__all__ = ["AppConfig", "Config", "ConfigError", "Node", "load_config", "run", "serve_node"]
_HOME = {"AppConfig": "config", "Config": "config", "ConfigError": "config",
         "load_config": "config", "Node": "node", "run": "node", "serve_node": "node"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'server' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
