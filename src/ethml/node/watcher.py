"""EventWatcher: checkpointed eth_getLogs polling, reorg-aware, backfilling after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

from eth_utils.address import to_checksum_address
from hexbytes import HexBytes

from ethml.chain.rounds import MINERS_PER_ROUND, challenge_for
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
                events.RoundClosed(),
                events.PredictionFinalized(),
                events.RoundExpired(),
                events.RequestExpired(),
            )
        }
        self._hashes: dict[int, str] = {}  # processed block -> hash, for reorg detection
        self._seen: set[tuple[str, int]] = set()
        self._next_block: int | None = None
        self._pending_reveals: list[tuple[int, int]] = []
        #: request id -> (model id, data CID), from PredictionRequested.
        self._requests: dict[int, tuple[int, str]] = {}
        #: round id -> the bond each of its commitments put up, from RoundOpened.
        self._bonds: dict[int, int] = {}
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
                    # Before the next log, which may close this round already.
                    await self._complete(job)
                    self._announce(job)
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
        if self.ctx.journal.has(job.round_id, job.challenge.hex(), "commit"):
            self.ctx.log.info("already_committed", round_id=job.round_id)
        else:
            await self.out.put(job)

    async def _current_from_contract(self) -> Job | None:
        """After a restart, the open round from getCurrentRound(): the job if it still takes
        commitments, a reveal if it is in its reveal phase. The contract's challenge is authoritative
        (a restarted devnet may answer other hashes for old blocks than the logs carried)."""
        current = await self.ctx.contract.functions.getCurrentRound().call()
        round_id, challenge, difficulty, open_block, commits, _mask, _cd, reveal_deadline, bond, ids = current
        if round_id == 0:
            return None
        if int(commits) >= MINERS_PER_ROUND:
            if reveal_deadline:
                await self.reveals.put((int(round_id), int(reveal_deadline)))
            return None
        block = await self.ctx.w3.eth.get_block(int(open_block))
        if bytes(challenge) == bytes(32):  # still the opening block: derive it as the contract will
            challenge = challenge_for(bytes(block["hash"]), self.ctx.deployment.ethml, int(round_id))
        job = Job(
            int(round_id),
            bytes(challenge),
            int(difficulty),
            [int(i) for i in ids],
            [],
            [],
            int(open_block),
            _hex(block["hash"]),
            bond=int(bond),
        )
        self._bonds[job.round_id] = job.bond
        await self._complete(job)
        self._announce(job)
        return job

    async def _complete(self, job: Job) -> None:
        """Fill in each request's model and data CID (from PredictionRequested, fetched for requests
        made before this node's checkpoint)."""
        missing = [rid for rid in job.request_ids if rid not in self._requests]
        if missing:
            logs = await self.ctx.contract.events.PredictionRequested().get_logs(
                argument_filters={"requestId": missing}, from_block=self.ctx.deployment.block
            )
            for log in logs:
                args = log["args"]
                self._requests[int(args["requestId"])] = (int(args["modelId"]), str(args["dataCid"]))
        lost = [rid for rid in job.request_ids if rid not in self._requests]
        if lost:
            raise RuntimeError(f"no PredictionRequested log for requests {lost}")
        job.model_ids = [self._requests[rid][0] for rid in job.request_ids]
        job.data_cids = [self._requests[rid][1] for rid in job.request_ids]

    def _announce(self, job: Job) -> None:
        self.ctx.board.start(job)
        self.ctx.stats.rounds_seen += 1
        self.ctx.stats.requests_seen += len(job.request_ids)
        self.ctx.stats.current_round = job.round_id
        self.ctx.stats.difficulty = job.difficulty
        self.ctx.emit(
            ChallengeSeen(
                job.round_id, tuple(job.request_ids), tuple(job.model_ids), tuple(job.data_cids), job.difficulty
            )
        )
        self.ctx.log.info("round_seen", round_id=job.round_id, requests=job.request_ids, difficulty=job.difficulty)

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
            self._requests[int(args["requestId"])] = (int(args["modelId"]), str(args["dataCid"]))
        elif name == "RoundOpened":
            round_id = int(args["roundId"])
            # The challenge needs the opening block's hash, which nobody knew before this block.
            job = Job(
                round_id=round_id,
                challenge=challenge_for(bytes(log["blockHash"]), self.ctx.deployment.ethml, round_id),
                difficulty=int(args["difficulty"]),
                request_ids=[int(i) for i in args["requestIds"]],
                model_ids=[],
                data_cids=[],
                block_number=int(log["blockNumber"]),
                block_hash=key[0],
                bond=int(args["bond"]),
            )
            self._bonds[round_id] = job.bond
            for old in [r for r in self._bonds if r < round_id - 16]:
                del self._bonds[old]
            return job
        elif name == "RevealPhaseStarted":
            self._pending_reveals.append((int(args["roundId"]), int(args["revealDeadline"])))
        elif name == "RoundClosed":
            self._round_closed(args, int(log["blockNumber"]))
        elif name == "PredictionFinalized":
            self._finalized(args, int(log["blockNumber"]))
        elif name == "RoundExpired":
            round_id = int(args["roundId"])
            self.ctx.closed_rounds.add(round_id)
            self.ctx.board.close_round(round_id, "expired")
            self._clear_current(round_id)
        elif name == "RequestExpired":
            request_id = int(args["requestId"])
            self._requests.pop(request_id, None)
            self.ctx.emit(RequestExpired(request_id))
        return None

    def _round_closed(self, args: Any, block: int) -> None:
        round_id = int(args["roundId"])
        self.ctx.closed_rounds.add(round_id)
        self.ctx.board.close_round(round_id, "closed")
        miners = tuple(str(m) for m in args["miners"])
        self.ctx.round_miners[round_id] = miners
        for old in [r for r in self.ctx.round_miners if r < round_id - 16]:
            del self.ctx.round_miners[old]
        mine = [i for i, m in enumerate(miners) if m.lower() == self.ctx.address.lower()]
        if mine:
            reward = int(args["rewards"][mine[0]])
            lost = self._bond_of(round_id) - int(args["bondsReturned"][mine[0]])
            self.ctx.stats.rewards += reward
            self.ctx.stats.bonds_lost += max(lost, 0)
            if reward or lost > 0:
                self.ctx.emit(RewardReceived(reward, block, round_id, max(lost, 0)))
        elif self._committed(round_id):
            # This node committed but did not reveal in time: its whole bond is burned.
            lost = self._bond_of(round_id)
            self.ctx.stats.bonds_lost += lost
            self.ctx.emit(RewardReceived(0, block, round_id, lost))
        self._clear_current(round_id)

    def _finalized(self, args: Any, block: int) -> None:
        request_id = int(args["requestId"])
        round_id = int(args["roundId"])
        self._requests.pop(request_id, None)
        miners = self.ctx.round_miners.get(round_id, ())
        mine = [i for i, m in enumerate(miners) if m.lower() == self.ctx.address.lower()]
        agreed = bool(mine) and bool(int(args["agreeingMask"]) & (1 << mine[0]))
        if agreed:
            self.ctx.stats.finalized_with_us += 1
        self.ctx.emit(
            Finalized(
                request_id,
                int(args["prediction"]),
                int(args["status"]),
                miners,
                agreed,
                block,
                int(args["agreeing"]),
                round_id,
            )
        )

    def _committed(self, round_id: int) -> bool:
        secret = self.ctx.journal.latest_secret(round_id)
        if secret is None:
            return False
        commit = self.ctx.journal.get(round_id, secret.challenge, "commit")
        return commit is not None and commit.status == "mined"

    def _bond_of(self, round_id: int) -> int:
        job = self.ctx.board.current
        if job is not None and job.round_id == round_id:
            return job.bond
        return self._bonds.get(round_id, 0)

    def _clear_current(self, round_id: int) -> None:
        if self.ctx.stats.current_round == round_id:
            self.ctx.stats.current_round = None

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
            message += f"; dropped work on round {retracted.round_id}"
            self.ctx.stats.current_round = None
        self.ctx.reorgs += 1
        self.ctx.emit(NodeWarning(message))
        self.ctx.log.warning("reorg", resume_from=self._next_block, retracted=retracted and retracted.round_id)

    async def _hash_at(self, number: int) -> str | None:
        try:
            block = await self.ctx.w3.eth.get_block(number)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            return None
        return _hex(block["hash"]) if block else None
