"""Gas of every TrainingTasks transaction, on the embedded py-evm chain (no node needed).

    python benchmarks/training_gas.py [--out FILE]

One task with three validations and two submissions, settled as accepted: each row is the `gasUsed`
of a real receipt (the largest of its kind where there are several).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from ethml.chain import EML, dev_account, embedded_chain, registry_contract, send, token_contract, training_contract
from ethml.chain.deploy import Parameters, deploy_system
from ethml.chain.embedded import time_travel
from ethml.coordinator.client import sign_permit
from ethml.coordinator.permit import PermitDomain
from ethml.training.flow import commit_test_set

TEST_CID = "bafkreitestsetcidxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
CID = "bafkreidatasetcidxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"


async def main() -> list[tuple[str, int]]:
    w3 = await embedded_chain(accounts=10)
    deployment = await deploy_system(w3, dev_account(0), parameters=Parameters())
    assert deployment.training is not None
    token = token_contract(w3, deployment.token)
    tasks = training_contract(w3, deployment.training)
    rows: dict[str, int] = {}

    async def tx(label: str, account: int, call: object) -> None:
        receipt = await send(w3, dev_account(account), call)
        rows[label] = max(rows.get(label, 0), int(receipt["gasUsed"]))

    for i in range(1, 6):  # 1, 2 trainers; 3, 4, 5 validators
        await tx("approve (once per account)", i, token.functions.approve(deployment.training, 2**255))
        role = 0 if i <= 2 else 1
        await tx("stake (first time)", i, tasks.functions.stake(role, 100 * EML))
    await tx("approve (once per account)", 9, token.functions.approve(deployment.training, 2**255))
    salt = b"\x01" * 32
    commitment = commit_test_set(TEST_CID, salt)
    block = await w3.eth.get_block("latest")
    now = int(block["timestamp"])
    await tx(
        "createTask",
        9,
        tasks.functions.createTask(CID, CID, commitment, 50 * EML, 3, 800_000, now + 100, now + 200, (0, 0, 13)),
    )
    for trainer in (1, 2):
        await tx("submitModel", trainer, tasks.functions.submitModel(1, CID, b"\x02" * 32, 900_000))
    time_travel(w3, 101)
    await tx("revealTestSet", 9, tasks.functions.revealTestSet(1, TEST_CID, salt))
    for validator in (3, 4, 5):
        for submission, score in ((0, 950_000), (1, 700_000 if validator < 5 else 990_000)):
            await tx("validate", validator, tasks.functions.validate(1, submission, score))
    await tx("finalizeTask (accepted, one slash, model registered)", 9, tasks.functions.finalizeTask(1))
    assert int(await registry_contract(w3, deployment.registry).functions.modelCount().call()) == 1
    # A task created by the coordinator's relayer (account 0) from account 8's EIP-2612 permit.
    domain = PermitDomain(deployment.chain_id, deployment.token, deployment.training)
    permit = sign_permit(dev_account(8), domain, 50 * EML, 0, now + 3600)
    await tx(
        "createTaskWithPermit (relayed, permit included)",
        0,
        tasks.functions.createTaskWithPermit(
            CID,
            CID,
            commitment,
            50 * EML,
            3,
            800_000,
            now + 1000,
            now + 2000,
            (0, 0, 13),
            (
                permit["owner"],
                permit["deadline"],
                permit["v"],
                bytes.fromhex(permit["r"][2:]),
                bytes.fromhex(permit["s"][2:]),
            ),
        ),
    )
    return list(rows.items())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args()
    measured = asyncio.run(main())
    table = "\n".join(
        ["| TrainingTasks transaction | gas |", "|---|---:|", *(f"| {label} | {gas:,} |" for label, gas in measured)]
    )
    print(table)
    if args.out:
        with args.out.open("a" if args.append else "w") as out:
            out.write(("\n" if args.append else "") + table + "\n")
