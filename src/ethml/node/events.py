"""What a node reports: typed events (for `node.events()`) and live statistics (`node.stats`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeEvent:
    """Base of every event a node yields."""


@dataclass(frozen=True)
class ChallengeSeen(NodeEvent):
    """A round opened: its requests (in answer order) with their models and data CIDs."""

    round_id: int
    request_ids: tuple[int, ...]
    model_ids: tuple[int, ...]
    data_cids: tuple[str, ...]
    difficulty: int


@dataclass(frozen=True)
class PredictionReady(NodeEvent):
    request_id: int
    prediction: int
    invalid_input: bool
    reason: str = ""


@dataclass(frozen=True)
class SolutionFound(NodeEvent):
    round_id: int
    nonce: int
    hashes: int
    seconds: float


@dataclass(frozen=True)
class Submitted(NodeEvent):
    """The commitment to the round's answer vector was sent."""

    round_id: int
    tx_hash: str
    answers: tuple[int, ...]


@dataclass(frozen=True)
class SubmissionMined(NodeEvent):
    round_id: int
    tx_hash: str
    gas_used: int


@dataclass(frozen=True)
class SubmissionDropped(NodeEvent):
    round_id: int
    reason: str


@dataclass(frozen=True)
class Finalized(NodeEvent):
    """One request of a closed round: its result, and whether this miner's answer agreed."""

    request_id: int
    prediction: int
    status: int
    #: The round's revealers by commitment slot (the zero address where none revealed).
    miners: tuple[str, ...]
    agreed: bool
    block: int
    #: Revealed votes that agreed with the result.
    agreeing: int = 0
    round_id: int = 0


@dataclass(frozen=True)
class RequestExpired(NodeEvent):
    request_id: int


@dataclass(frozen=True)
class RewardReceived(NodeEvent):
    """Rewards (base reward and tip shares) credited to this miner's balance on the oracle (taken out
    with claimRewards); `bond_lost` is the part of its bond the round burned."""

    amount: int
    block: int
    round_id: int = 0
    bond_lost: int = 0


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
    #: Rounds this node saw open, and the requests in them.
    rounds_seen: int = 0
    requests_seen: int = 0
    #: Commitments sent, mined, dropped.
    submissions: int = 0
    accepted: int = 0
    dropped: int = 0
    #: Requests whose result this node's answer agreed with.
    finalized_with_us: int = 0
    rewards: int = 0
    #: Bond this node lost (missing or disagreeing reveals).
    bonds_lost: int = 0
    current_round: int | None = None
    difficulty: int = 0
    last_error: str | None = None
    warnings: list[str] = field(default_factory=list)
