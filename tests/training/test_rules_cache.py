"""The coordinator's cache of the market's rules: requests that find it stale together share one read
of TrainingTasks (on a real chain), and a failed read fails them and is retried by the next."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from web3 import AsyncWeb3

from ethml.chain import Parameters, deploy_system, dev_account
from ethml.chain.rpc import http_web3
from ethml.training import rules
from ethml.training.rules import RulesCache


def test_concurrent_requests_share_one_read(anvil_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = 0
    real = rules.read_rules

    async def counted(w3: AsyncWeb3[Any], deployment: Any) -> rules.MarketRules:
        nonlocal reads
        reads += 1
        return await real(w3, deployment)

    monkeypatch.setattr(rules, "read_rules", counted)

    async def main() -> None:
        w3 = http_web3(anvil_url)
        dep = await deploy_system(w3, dev_account(0), parameters=Parameters())
        cache = RulesCache(w3, dep, ttl=3600)
        got = await asyncio.gather(*(cache.get() for _ in range(50)))
        assert reads == 1
        assert len(set(got)) == 1 and got[0].version >= 1
        assert await cache.get() is got[0] and reads == 1  # fresh: no read
        cache.ttl = 0.0  # stale from now on: the next wave reads once more, together
        again = await asyncio.gather(*(cache.get() for _ in range(50)))
        assert reads == 2 and set(again) == {got[0]}
        await w3.provider.disconnect()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_a_failed_read_fails_its_waiters_and_the_next_request_reads_again(anvil_url: str) -> None:
    async def main() -> None:
        w3 = http_web3(anvil_url)
        dep = await deploy_system(w3, dev_account(0), parameters=Parameters())
        dead = http_web3("http://127.0.0.1:9")  # nothing listens on the discard port
        cache = RulesCache(dead, dep)
        results = await asyncio.gather(*(cache.get() for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, Exception) for r in results)
        cache.w3 = w3
        assert (await cache.get()).version >= 1
        await w3.provider.disconnect()  # type: ignore[attr-defined]
        await dead.provider.disconnect()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_a_node_that_never_answers_fails_the_read_within_its_wait(anvil_url: str) -> None:
    """Found by an outside review: a chain node that accepted connections and never answered (stopped, not
    gone) held every `POST /api/tasks` that found the cache stale for web3's five tries of 30 s: a 503 after
    155 s. The read now fails after `wait` (a TimeoutError: the API's 503), and the next one reads again."""

    async def main() -> None:
        w3 = http_web3(anvil_url)
        dep = await deploy_system(w3, dev_account(0), parameters=Parameters())

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            await asyncio.Event().wait()

        silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        hung = http_web3(f"http://127.0.0.1:{port}", timeout=300)
        cache = RulesCache(hung, dep, wait=0.5)
        reads = [asyncio.ensure_future(cache.get()) for _ in range(5)]
        done, _ = await asyncio.wait(reads, timeout=60)  # without the wait: still waiting after a minute
        assert len(done) == 5 and all(isinstance(r.exception(), TimeoutError) for r in reads), done
        cache.w3 = w3
        assert (await cache.get()).version >= 1
        for pending in reads:
            pending.cancel()
        silent.close()
        await w3.provider.disconnect()  # type: ignore[attr-defined]
        await hung.provider.disconnect()  # type: ignore[attr-defined]

    asyncio.run(main())
