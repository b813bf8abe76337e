"""ethml: a decentralized machine-learning inference oracle on Ethereum.

`import ethml` is cheap: the node (and with it web3 and scikit-learn's runtime) loads on first use of
`ethml.Node`, `ethml.NodeConfig` or `ethml.NodeStats`, so `ethml --help` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ethml.errors import ChainError, EthmlError, IpfsError, ModelError, PowError

if TYPE_CHECKING:
    from ethml.node import Node, NodeConfig, NodeStats

__version__ = "0.1.0"

__all__ = [
    "ChainError",
    "EthmlError",
    "IpfsError",
    "ModelError",
    "Node",
    "NodeConfig",
    "NodeStats",
    "PowError",
    "__version__",
]

#: Public names imported from their module on first access.
_LAZY = {"Node": "ethml.node", "NodeConfig": "ethml.node", "NodeStats": "ethml.node"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ethml' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
