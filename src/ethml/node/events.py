"""What a node reports: typed events (for `node.events()`) and live statistics (`node.stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeEvent:
    """Base of every event a node yields."""


@dataclass(frozen=True)
class ChallengeSeen(NodeEvent):
    request_id: int
    model_id: int
    data_cid: str
    difficulty: int


@dataclass(frozen=True)
class PredictionReady(NodeEvent):
    request_id: int
    prediction: int
    invalid_input: bool
    reason: str = ""


@dataclass(frozen=True)
class SolutionFound(NodeEvent):
    request_id: int
    nonce: int
    hashes: int
    seconds: float


@dataclass(frozen=True)
class Submitted(NodeEvent):
    request_id: int
    tx_hash: str
    prediction: int


@dataclass(frozen=True)
class SubmissionMined(NodeEvent):
    request_id: int
    tx_hash: str
    gas_used: int


@dataclass(frozen=True)
class SubmissionDropped(NodeEvent):
    request_id: int
    reason: str


@dataclass(frozen=True)
class Finalized(NodeEvent):
    request_id: int
    prediction: int
    status: int
    miners: tuple[str, ...]
    agreed: bool
    block: int
    #: Revealed votes that agreed with the result.
    agreeing: int = 0


@dataclass(frozen=True)
class RequestExpired(NodeEvent):
    request_id: int


@dataclass(frozen=True)
class RewardReceived(NodeEvent):
    """Rewards accrued to this miner (claimed on chain with claimRewards)."""

    amount: int
    block: int


@dataclass(frozen=True)
class NodeWarning(NodeEvent):
    message: str


@dataclass
class NodeStats:
    #: Hashes per second while grinding (idle time between requests excluded).
    hashrate: float = 0.0
    #: Share of the node's running time spent grinding (0..1).
    grinding_share: float = 0.0
    hashes: int = 0
    requests_seen: int = 0
    submissions: int = 0
    accepted: int = 0
    dropped: int = 0
    finalized_with_us: int = 0
    rewards: int = 0
    current_request: int | None = None
    difficulty: int = 0
    last_error: str | None = None
    warnings: list[str] = field(default_factory=list)
