"""The miner node: asyncio actors (watcher, fetcher, predictor, grinder, submitter) and `Node`."""

from ethml.node.context import NodeConfig
from ethml.node.events import (
    ChallengeSeen,
    Finalized,
    NodeEvent,
    NodeStats,
    NodeWarning,
    PredictionReady,
    RequestExpired,
    RewardReceived,
    SolutionFound,
    SubmissionDropped,
    SubmissionMined,
    Submitted,
)
from ethml.node.journal import Journal
from ethml.node.node import Node

__all__ = [
    "ChallengeSeen",
    "Finalized",
    "Journal",
    "Node",
    "NodeConfig",
    "NodeEvent",
    "NodeStats",
    "NodeWarning",
    "PredictionReady",
    "RequestExpired",
    "RewardReceived",
    "SolutionFound",
    "SubmissionDropped",
    "SubmissionMined",
    "Submitted",
]
