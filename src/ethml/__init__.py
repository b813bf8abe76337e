"""ethml: a decentralized machine-learning inference oracle on Ethereum."""

from ethml.errors import ChainError, EthmlError, IpfsError, ModelError, PowError
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
