"""EventWatcher: checkpointed eth_getLogs polling, reorg-aware, backfilling after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

from eth_utils.address import to_checksum_address
from hexbytes import HexBytes

from ethml.chain.deploy import challenge_for
from ethml.node.context import NodeContext, is_connection_error
from ethml.node.events import ChallengeSeen, Finalized, NodeWarning, RequestExpired, RewardReceived
from ethml.node.jobs import Job

LOG_CHUNK = 2_000
KEEP_BLOCK_HASHES = 256


def _hex(value: Any) -> str:
    return HexBytes(value).to_0x_hex()


class EventWatcher:
    def __init__(self, ctx: NodeContext, out: asyncio.Queue[Job], reveals: asyncio.Queue[tuple[int, int]]) -> None:
        self.ctx = ctx
        self.out = out
        self.reveals = reveals
        events = ctx.contract.events
        self._decoders = {
            _hex(e.topic): e
            for e in (
                events.PredictionRequested(),
                events.RoundOpened(),
                events.RevealPhaseStarted(),
                events.PredictionFinalized(),
                events.RequestExpired(),
            )
        }
        self._hashes: dict[int, str] = {}  # processed block -> hash, for reorg detection
        self._seen: set[tuple[str, int]] = set()
        self._next_block: int | None = None
        self._pending_reveals: list[tuple[int, int]] = []
        self._cids: dict[int, str] = {}  # request id -> data CID, from PredictionRequested
        self.polls = 0

    async def run(self) -> None:
        backoff = 1.0
        interval = self.ctx.config.poll_interval
        # On a quiet chain (no new block) polls slow down, up to ten times the interval (1 s at most
        # unless the interval itself is longer), and return to the interval with the next block.
        idle_limit = max(interval, min(10 * interval, 1.0))
        while not self.ctx.stopping.is_set():
            try:
                if self._next_block is None:
                    await self._start()
                before = self._next_block
                await self.poll()
                backoff = 1.0
                quiet = self._next_block == before and self.ctx.board.current is None
                interval = min(interval * 1.5, idle_limit) if quiet else self.ctx.config.poll_interval
                if await self.ctx.sleep(interval):
                    return
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.ctx.stats.last_error = f"RPC unreachable: {exc}"
                self.ctx.emit(NodeWarning(f"RPC unreachable ({type(exc).__name__}); retrying in {backoff:g} s"))
                self.ctx.log.warning("rpc_unreachable", error=str(exc), retry_in=backoff)
                if await self.ctx.sleep(backoff):
                    return
                backoff = min(backoff * 2, self.ctx.config.max_backoff)

    async def _start(self) -> None:
        checkpoint = self.ctx.journal.checkpoint()
        if checkpoint is not None:
            block, block_hash = checkpoint
            self._hashes[block] = block_hash
            self._next_block = block + 1
        else:
            self._next_block = self.ctx.deployment.block
        self.ctx.log.info("watcher_started", from_block=self._next_block)

    async def poll(self) -> None:
        w3 = self.ctx.w3
        latest = await w3.eth.block_number
        await self._check_reorg(latest)
        assert self._next_block is not None
        start = self._next_block
        if start > latest:
            if self.polls == 0:
                # After a restart on a quiet chain (no new block), the round may still be waiting for us.
                self.polls += 1
                await self._dispatch(await self._current_from_contract())
            return
        new_job: Job | None = None
        for lo in range(start, latest + 1, LOG_CHUNK):
            hi = min(lo + LOG_CHUNK - 1, latest)
            logs = await w3.eth.get_logs(
                {"address": to_checksum_address(self.ctx.deployment.ethml), "fromBlock": lo, "toBlock": hi}
            )
            for log in sorted(logs, key=lambda entry: (entry["blockNumber"], entry["logIndex"])):
                job = self._handle(log)
                if job is not None:
                    if not job.data_cid:
                        job.data_cid = await self._cid_of(job.request_id)
                    new_job = job
        tip = await w3.eth.get_block(latest)
        tip_hash = _hex(tip["hash"])
        self._hashes[latest] = tip_hash
        for old in [b for b in self._hashes if b < latest - KEEP_BLOCK_HASHES]:
            del self._hashes[old]
        self._next_block = latest + 1
        self.ctx.journal.set_checkpoint(latest, tip_hash)
        self.polls += 1
        if self.polls == 1 and self.ctx.board.current is None:
            new_job = await self._current_from_contract() or new_job
        await self._dispatch(new_job)
        reveals, self._pending_reveals = self._pending_reveals, []
        for item in reveals:
            await self.reveals.put(item)

    async def _dispatch(self, job: Job | None) -> None:
        if job is None or job.is_cancelled or self.ctx.board.current is not job:
            return
        if self.ctx.journal.has(job.request_id, job.challenge.hex(), "commit"):
            self.ctx.log.info("already_committed", request_id=job.request_id)
        else:
            await self.out.put(job)

    async def _current_from_contract(self) -> Job | None:
        """After a restart, the current round from getCurrentRound(): the job if it still takes
        commitments, a reveal if it is in its reveal phase."""
        current = await self.ctx.contract.functions.getCurrentRound().call()
        request_id, challenge, difficulty, model_id, open_block, commits, _mask, _c, reveal_deadline = current
        if request_id == 0:
            return None
        if int(commits) >= 5:
            if reveal_deadline:
                await self.reveals.put((int(request_id), int(reveal_deadline)))
            return None
        block = await self.ctx.w3.eth.get_block(int(open_block))
        block_hash = _hex(block["hash"])
        job = Job(
            int(request_id),
            challenge_for(bytes(block["hash"]), self.ctx.deployment.ethml, int(request_id)),
            int(difficulty),
            int(model_id),
            await self._cid_of(int(request_id)),
            int(open_block),
            block_hash,
        )
        if bytes(challenge) not in (bytes(32), job.challenge):
            raise RuntimeError(f"challenge of request {request_id} does not match the contract's")
        self._announce(job)
        return job

    async def _cid_of(self, request_id: int) -> str:
        """The data CID of a request made before this node's checkpoint, from its PredictionRequested log."""
        cached = self._cids.get(request_id)
        if cached is not None:
            return cached
        logs = await self.ctx.contract.events.PredictionRequested().get_logs(
            argument_filters={"requestId": request_id}, from_block=self.ctx.deployment.block
        )
        if not logs:
            raise RuntimeError(f"no PredictionRequested log for request {request_id}")
        return str(logs[0]["args"]["dataCid"])

    def _announce(self, job: Job) -> None:
        self.ctx.board.start(job)
        self.ctx.stats.requests_seen += 1
        self.ctx.stats.current_request = job.request_id
        self.ctx.stats.difficulty = job.difficulty
        self.ctx.emit(ChallengeSeen(job.request_id, job.model_id, job.data_cid, job.difficulty))
        self.ctx.log.info("challenge_seen", request_id=job.request_id, model_id=job.model_id, difficulty=job.difficulty)

    def _handle(self, log: Any) -> Job | None:
        key = (_hex(log["blockHash"]), int(log["logIndex"]))
        if key in self._seen or not log["topics"]:
            return None
        self._seen.add(key)
        self._hashes[int(log["blockNumber"])] = key[0]
        topic = _hex(log["topics"][0])
        decoder = self._decoders.get(topic)
        if decoder is None:
            return None
        event = decoder.process_log(log)
        args = event["args"]
        name = event["event"]
        if name == "PredictionRequested":
            self._cids[int(args["requestId"])] = str(args["dataCid"])
            return None
        if name == "RoundOpened":
            request_id = int(args["requestId"])
            # The challenge needs the opening block's hash, which nobody knew before this block.
            job = Job(
                request_id=request_id,
                challenge=challenge_for(bytes(log["blockHash"]), self.ctx.deployment.ethml, request_id),
                difficulty=int(args["difficulty"]),
                model_id=int(args["modelId"]),
                data_cid=self._cids.get(request_id, ""),
                block_number=int(log["blockNumber"]),
                block_hash=key[0],
            )
            self._announce(job)
            return job
        if name == "RevealPhaseStarted":
            self._pending_reveals.append((int(args["requestId"]), int(args["revealDeadline"])))
        elif name == "PredictionFinalized":
            request_id = int(args["requestId"])
            self._cids.pop(request_id, None)
            self.ctx.closed_requests.add(request_id)
            self.ctx.board.close_request(request_id, "finalized")
            miners = tuple(str(m) for m in args["miners"])
            mine = [i for i, m in enumerate(miners) if m.lower() == self.ctx.address.lower()]
            agreed = bool(mine) and bool(int(args["agreeingMask"]) & (1 << mine[0]))
            if agreed:
                self.ctx.stats.finalized_with_us += 1
                reward = int(args["baseRewardPerMiner"]) + int(args["tipPerMiner"])
                if reward:
                    self.ctx.stats.rewards += reward
                    self.ctx.emit(RewardReceived(reward, int(log["blockNumber"])))
            self.ctx.emit(
                Finalized(
                    request_id,
                    int(args["prediction"]),
                    int(args["status"]),
                    miners,
                    agreed,
                    int(log["blockNumber"]),
                    int(args["agreeing"]),
                )
            )
            self._clear_current(request_id)
        elif name == "RequestExpired":
            request_id = int(args["requestId"])
            self._cids.pop(request_id, None)
            self.ctx.closed_requests.add(request_id)
            self.ctx.board.close_request(request_id, "expired")
            self.ctx.emit(RequestExpired(request_id))
            self._clear_current(request_id)
        return None

    def _clear_current(self, request_id: int) -> None:
        if self.ctx.stats.current_request == request_id:
            self.ctx.stats.current_request = None

    async def _check_reorg(self, latest: int) -> None:
        if not self._hashes:
            return
        last = max(self._hashes)
        if last <= latest and await self._hash_at(last) == self._hashes[last]:
            return
        # Walk back over the blocks we know until one still matches: the fork point.
        fork = None
        for number in sorted(self._hashes, reverse=True):
            if number <= latest and await self._hash_at(number) == self._hashes[number]:
                fork = number
                break
        removed = {h for n, h in self._hashes.items() if fork is None or n > fork}
        for n in [n for n in self._hashes if fork is None or n > fork]:
            del self._hashes[n]
        self._seen = {k for k in self._seen if k[0] not in removed}
        retracted = self.ctx.board.retract_blocks(removed)
        self._next_block = (fork + 1) if fork is not None else self.ctx.deployment.block
        message = f"chain reorganisation: re-reading logs from block {self._next_block}"
        if retracted is not None:
            message += f"; dropped work on request {retracted.request_id}"
            self.ctx.stats.current_request = None
        self.ctx.reorgs += 1
        self.ctx.emit(NodeWarning(message))
        self.ctx.log.warning("reorg", resume_from=self._next_block, retracted=retracted and retracted.request_id)

    async def _hash_at(self, number: int) -> str | None:
        try:
            block = await self.ctx.w3.eth.get_block(number)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            return None
        return _hex(block["hash"]) if block else None
