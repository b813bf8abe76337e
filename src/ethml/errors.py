"""Every exception ethml raises: one root, one base per area."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ethml.chain.reverts import Revert


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
    """A transaction reverts: refused by the pre-flight (`preflight`: nothing sent, no gas spent), or
    mined and reverted in `block`. `reason` says why in words; `error` is the decoded contract error
    (name and arguments) where there is one."""

    def __init__(
        self,
        what: str,
        reason: str,
        *,
        error: Revert | None = None,
        preflight: bool = False,
        block: int | None = None,
    ) -> None:
        self.what = what
        self.reason = reason
        self.error = error
        self.preflight = preflight
        self.block = block
        if preflight:
            message = f"{what} would revert: {reason}; not sent, no gas spent"
        elif block is not None:
            message = f"{what} reverted in block {block}: {reason}"
        else:
            message = f"{what} reverted: {reason}"
        super().__init__(message)


# ------------------------------------------------------------------------- ipfs


class IpfsError(EthmlError):
    """Reading, verifying or storing IPFS content failed."""


class InvalidGateway(IpfsError, ValueError):
    """An IPFS gateway URL that is no http:// or https:// URL with a host (and a valid port)."""


#: How much of a text that is not a CID its error repeats (a CID is at most about 100 characters).
CID_SHOWN = 120


class InvalidCID(IpfsError, ValueError):
    def __init__(self, text: str, problem: str) -> None:
        self.text = text
        shown = repr(text) if len(text) <= CID_SHOWN else f"{text[:CID_SHOWN]!r}... ({len(text):,} characters)"
        super().__init__(f"{shown} is not a valid CID: {problem}")


class UnsupportedCID(IpfsError, ValueError):
    def __init__(self, cid: str, what: str) -> None:
        self.cid = cid
        super().__init__(
            f"CID {cid} uses {what}; ethml reads CIDv0 and CIDv1 with the raw or dag-pb codec and sha2-256"
        )


class HashMismatch(IpfsError):
    def __init__(self, cid: str, source: str) -> None:
        self.cid = cid
        self.source = source
        super().__init__(f"block {cid} from {source} does not hash to its CID (tampered or corrupt); discarded")


class ContentTooLarge(IpfsError):
    def __init__(self, cid: str, size: int, limit: int) -> None:
        self.cid = cid
        self.size = size
        self.limit = limit
        super().__init__(f"content {cid} is at least {size:,} bytes, over the {limit:,}-byte limit")


class MalformedDag(IpfsError):
    def __init__(self, cid: str, problem: str) -> None:
        self.cid = cid
        super().__init__(f"block {cid} is not a valid UnixFS file node: {problem}")


class BlockNotFound(IpfsError, LookupError):
    def __init__(self, cid: str) -> None:
        self.cid = cid
        super().__init__(f"block {cid} is not in the local blockstore and no gateway is configured (--gateway URL)")


class GatewayFailure(IpfsError):
    """One gateway failed for one block; collected into AllGatewaysFailed."""

    def __init__(self, gateway: str, cid: str, reason: str) -> None:
        self.gateway = gateway
        self.cid = cid
        self.reason = reason
        super().__init__(f"{gateway}: {reason}")


class AllGatewaysFailed(IpfsError):
    def __init__(self, cid: str, failures: list[GatewayFailure]) -> None:
        self.cid = cid
        self.failures = failures
        reasons = "; ".join(str(f) for f in failures)
        super().__init__(f"could not fetch block {cid} from any gateway ({reasons})")


class IpfsTimeout(IpfsError, TimeoutError):
    def __init__(self, cid: str, seconds: float) -> None:
        self.cid = cid
        super().__init__(f"fetching {cid} took longer than {seconds:g} s; raise the timeout or check the gateways")


# --------------------------------------------------------------------------- ml


class ModelError(EthmlError):
    """Loading or running a model failed."""


class UnknownModelName(ModelError, KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"no model {name!r}; known models: {', '.join(known)}")

    def __str__(self) -> str:
        return str(self.args[0])


class ArtifactMismatch(ModelError):
    def __init__(self, name: str, expected: str, actual: str) -> None:
        self.name = name
        super().__init__(f"model artifact {name} has sha256 {actual}, but {expected} was registered; refusing to load")


class UntrustedArtifact(ModelError):
    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(f"refusing to load model artifact {name}: {problem}")


class InvalidInput(ModelError, ValueError):
    """The data point cannot be used as model input; miners submit INVALID_INPUT for it."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"invalid data point: {problem}")


class NodeError(EthmlError):
    """A miner node cannot start or run as configured."""


class JournalLocked(NodeError):
    """Another miner holds the journal of this account and chain."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"another miner is already running with this account and chain (journal {path} is locked); "
            "stop it first, or use another account"
        )
