"""Every exception ethml raises: one root, one base per area."""

from __future__ import annotations


class EthmlError(Exception):
    """Root of all ethml errors."""


# ---------------------------------------------------------------- proof of work


class PowError(EthmlError):
    """Proof-of-work search or verification failed."""


class InvalidPowArgument(PowError, ValueError):
    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"invalid {name}: {problem}")


class NativeUnavailable(PowError, ImportError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"the native PoW core is not available ({reason}); reinstall ethml with a C compiler "
            "(`pip install .`), or set ETHML_PUREPYTHON=1 to use the slow pure-Python reference"
        )


class UnknownPowPath(PowError, ValueError):
    def __init__(self, path: str, available: list[str]) -> None:
        self.path = path
        super().__init__(f"PoW path {path!r} is not available here; choose one of {', '.join(available)}")


# ------------------------------------------------------------------------ chain


class ChainError(EthmlError):
    """Talking to the chain or to the ethml contracts failed."""


class ArtifactError(ChainError):
    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(f"contract artifact {name!r}: {problem}; rebuild with `make contracts`")


class DeploymentError(ChainError):
    pass


class DeploymentNotFound(DeploymentError, FileNotFoundError):
    def __init__(self, chain_id: int, searched: str) -> None:
        self.chain_id = chain_id
        super().__init__(
            f"no ethml deployment for chain id {chain_id} in {searched}; run `ethml devnet` or pass --deployment FILE"
        )


class TransactionReverted(ChainError):
    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what} reverted: {reason}")
