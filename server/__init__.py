"""turnout's broadcast node: a Pusher-protocol websocket server on trio, clustered over Redis.

Public surface: ``Config``/``load_config`` to configure a node, ``serve_node`` to run one inside
a trio nursery (``node = await nursery.start(serve_node, config)``), ``run`` for a process.
"""

from .config import AppConfig as AppConfig
from .config import Config as Config
from .config import ConfigError as ConfigError
from .config import load_config as load_config
from .node import Node as Node
from .node import run as run
from .node import serve_node as serve_node

__all__ = ["AppConfig", "Config", "ConfigError", "Node", "load_config", "run", "serve_node"]
