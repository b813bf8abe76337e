"""The typed keys of the objects an `ethml serve` application shares (set by `server`'s cleanup
contexts, read by the routes and the background loops)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ethml.coordinator.artifacts import PendingArtifacts
from ethml.coordinator.chain import Chain
from ethml.coordinator.config import ServeConfig
from ethml.coordinator.deployment import Fatal
from ethml.coordinator.dispatch import Dispatcher
from ethml.coordinator.metrics import Metrics
from ethml.coordinator.permit import PermitDomain
from ethml.coordinator.store import Store
from ethml.coordinator.uploads import Uploads
from ethml.ipfs import IpfsClient
from ethml.training.rules import RulesCache
from ethml.training.terms import TermsDomain

CONFIG = web.AppKey("config", ServeConfig)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
CHAIN = web.AppKey("chain", Chain)
#: The deployment this server's state belongs to (`deployment.identity`), read at start.
IDENTITY: web.AppKey[dict[str, object]] = web.AppKey("identity", dict)
#: Set when the server must not go on (the chain under it was replaced); `ethml serve` then stops.
FATAL = web.AppKey("fatal", Fatal)
#: The EIP-712 domain of EML permits to TrainingTasks on this chain.
PERMITS = web.AppKey("permits", PermitDomain)
#: The EIP-712 domain of the task terms requesters sign (TrainingTasks on this chain).
TERMS = web.AppKey("terms", TermsDomain)
#: The market's parameters terms must meet (minimum seat reward, periods, parameters version), cached.
RULES = web.AppKey("rules", RulesCache)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
IPFS = web.AppKey("ipfs", IpfsClient)
#: Workers' model artifacts until the chain decides on their reveal (kept apart from IPFS's blockstore).
PENDING = web.AppKey("pending", PendingArtifacts)
#: This instance's uploads accepted and not yet written (counted against the disk's free space).
UPLOADS = web.AppKey("uploads", Uploads)
#: Set when the server begins to stop: long-lived responses (the dashboard's event stream) end on it, so that
#: stopping does not wait out the shutdown timeout for them.
STOPPING = web.AppKey("stopping", asyncio.Event)
