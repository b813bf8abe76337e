"""Which deployment a coordinator's state belongs to, and whether the chain under a running server is still it.

The state in Redis (task documents linked to chain task ids, jobs, the follower's checkpoint) is one
deployment's. A devnet or a fork started afresh and deployed again has the same chain id and, from the same
deployer, the same addresses, but numbers its tasks from 1 again. What tells two deployments apart is the hash of
the block their contracts were deployed in: `identity` reads it at start (a server for another deployment
refuses to start on the state), and `DeploymentWatch` reads it again while the server runs (a devnet started
afresh under a running server stops it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from web3 import AsyncWeb3
from web3.exceptions import BlockNotFound, Web3Exception

from ethml.chain import Deployment
from ethml.errors import ChainError, EthmlError

log = structlog.get_logger("ethml.coordinator")

#: Seconds between two reads of the deployment's block while the server runs, and how many reads in a row must
#: find another block (or none) before the chain is taken as replaced: a node behind a load balancer that lags,
#: or answers once from another node, does not stop a server.
WATCH_INTERVAL = 10.0
WATCH_CONFIRMATIONS = 3
#: How long one read may take.
READ_TIMEOUT = 10.0
#: What a read of the node may fail with besides Web3Exception (its errors, answers it cannot parse).
NODE_ERRORS = (OSError, aiohttp.ClientError, Web3Exception, TimeoutError)


class AnotherDeployment(EthmlError):
    """The coordinator's Redis holds the state of another deployment than the one it was started for, or the chain
    under a running server was replaced."""


async def identity(w3: AsyncWeb3[Any], chain_id: int, deployment: Deployment) -> dict[str, object]:
    """What tells this deployment from any other: the chain id, TrainingTasks, and the number and hash of the block
    the contracts were deployed in. A ChainError when the chain lacks that block (a stale deployment file) or the
    node does not give it."""
    assert deployment.training is not None
    try:
        block_hash = await _block_hash(w3, deployment.block)
    except BlockNotFound:
        raise ChainError(
            f"this chain has no block {deployment.block}, where the deployment file says its contracts were deployed: "
            "the file is stale (a devnet started afresh?); deploy again"
        ) from None
    except NODE_ERRORS as exc:
        raise ChainError(
            f"the node did not give block {deployment.block} (the deployment's): {exc or type(exc).__name__}"
        ) from None
    return {
        "chain_id": chain_id,
        "training": deployment.training.lower(),
        "block": deployment.block,
        "block_hash": block_hash,
    }


async def _block_hash(w3: AsyncWeb3[Any], number: int) -> str:
    """Block `number`'s hash as 0x-hex, read within READ_TIMEOUT (BlockNotFound, or one of NODE_ERRORS)."""
    block = await asyncio.wait_for(w3.eth.get_block(number), READ_TIMEOUT)
    return "0x" + bytes(block["hash"]).hex()


def said(d: dict[str, object]) -> str:
    block = f"block {d.get('block')} ({str(d.get('block_hash'))[:18]}...)"
    return f"chain {d.get('chain_id')}, TrainingTasks {d.get('training')} deployed in {block}"


@dataclass
class Fatal:
    """Set once when the server must not go on (the chain under it was replaced): why, and an event for whoever
    stops the process."""

    message: str | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self, message: str) -> None:
        if self.message is None:
            self.message = message
            self.event.set()


@dataclass
class DeploymentWatch:
    """Reads the deployment's block every WATCH_INTERVAL: once WATCH_CONFIRMATIONS reads in a row find another hash
    there, or no such block, the chain under the server was replaced (a devnet started afresh), and `fatal` is set:
    the state is another chain's, and nothing more may be relayed or followed on it. A read that fails counts
    neither way."""

    w3: AsyncWeb3[Any]
    deployment: Deployment
    expected: dict[str, object]
    fatal: Fatal
    seen_other: int = 0

    async def step(self) -> None:
        found: str | None
        try:
            found = await _block_hash(self.w3, self.deployment.block)
        except BlockNotFound:
            found = None
        except NODE_ERRORS:
            return  # not known now: the next read tells
        if found == self.expected["block_hash"]:
            self.seen_other = 0
            return
        self.seen_other += 1
        log.warning("deployment_block_changed", block=self.deployment.block, found=found, reads=self.seen_other)
        if self.seen_other < WATCH_CONFIRMATIONS:
            return
        now = f"block {self.deployment.block} is {found[:18] + '...' if found else 'gone'}"
        message = (
            f"the chain under this server was replaced (a devnet started afresh?): its state belongs to "
            f"{said(self.expected)}, and {now}. Stopped, so that nothing more is relayed or followed on the old "
            "state; deploy again and start the server with another --data-dir (or another Redis database)"
        )
        log.error("chain_replaced", block=self.deployment.block, expected=self.expected["block_hash"], found=found)
        self.fatal.set(message)
