"""ethml: a decentralized machine-learning inference oracle on Ethereum."""

from ethml.errors import ChainError, EthmlError, PowError

__version__ = "0.1.0"

__all__ = ["ChainError", "EthmlError", "PowError", "__version__"]
