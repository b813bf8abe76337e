"""Embedding ethml.Node in your own asyncio program.

Runs as is: it starts an in-process chain, deploys ethml with the bundled models, starts five
nodes, asks for one prediction and prints what the first node reports until the request closes.
Against a real chain, build the Node with rpc_url=... and a Deployment from `ethml devnet`.

    python examples/embedded_node.py
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import structlog

from ethml import Node, NodeConfig
from ethml.chain import (
    Parameters,
    consumer_contract,
    deploy_system,
    dev_account,
    embedded_chain,
    send,
)
from ethml.ipfs import Blockstore, IpfsClient
from ethml.ml import Manifest
from ethml.node import Finalized
from ethml.requester import consumer_deposit


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    w3 = await embedded_chain()
    manifest = Manifest.load()
    deployment = await deploy_system(
        w3,
        dev_account(0),
        parameters=Parameters(min_difficulty=1 << 16, max_difficulty=1 << 16),
        models=manifest.registry_specs(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig(threads=1, poll_interval=0.1, data_dir=Path(tmp))
        iris = manifest.by_name("iris")
        point = manifest.data_point_path(iris.data_points[0]).read_bytes()
        cid = str(IpfsClient(Blockstore(Path(tmp) / "blocks")).add_bytes(point))

        nodes = [Node(w3=w3, deployment=deployment, account=dev_account(i), config=config) for i in range(1, 5)]
        async with Node(w3=w3, deployment=deployment, account=dev_account(0), config=config) as node:
            for other in nodes:
                await other.start()
            events = node.events()
            consumer = consumer_contract(w3, deployment.consumer)
            deposit = await consumer_deposit(w3, deployment)  # pays the consumer's callback
            await send(w3, dev_account(9), consumer.functions.request(iris.id, cid, 0), value=deposit)
            async for event in events:
                print(type(event).__name__, event)
                if isinstance(event, Finalized):
                    break
            print("stats:", node.stats)
            await asyncio.gather(*(other.stop() for other in nodes))
        answer = await consumer.functions.answers(1).call()
        print(f"the consumer contract received prediction {answer[1]} (true label {iris.data_points[0].label:g})")


if __name__ == "__main__":
    asyncio.run(main())
