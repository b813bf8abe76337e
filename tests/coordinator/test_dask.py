"""`ethml worker --dask` end to end: one trainer trains locally, another on a real LocalCluster (two worker
processes), and they submit the same sha256, the one a local fit gives; three validators score both
submissions on Dask clusters (two on that LocalCluster, one on a `--dask local:2` cluster of its own)
and the model is accepted. The dashboard (its data and the page in headless Chromium), /api/workers
and /metrics show the cluster-backed workers with their clusters' size."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

from ethml.chain import dev_account
from ethml.training import fit_and_claim, sklearn_dataset_csv, split_csv
from ethml.training.flow import task_info
from tests.coordinator.conftest import TRAINERS, VALIDATORS, Coordinator
from tests.coordinator.test_dashboard import _browser, _wait
from tests.coordinator.test_flow import post_wine_task, task, travel, wait_status
from tests.node.conftest import wait_until
from tests.training.conftest import local_cluster
from tests.training.test_e2e import _spec as wine_spec


async def test_cluster_backed_workers_train_and_validate_with_the_local_bytes(coordinator: Coordinator) -> None:
    c = coordinator
    stack = contextlib.ExitStack()
    # Starting processes blocks: keep it off this loop, where the coordinator runs.
    cluster, client = await asyncio.to_thread(stack.enter_context, local_cluster(2))
    try:
        await asyncio.to_thread(client.get_task_stream, count=0)  # the scheduler records tasks from now on
        started = time.time()
        key = await c.requester_key()
        task_id, _body = await post_wine_task(c, key)
        opened = await wait_status(c, task_id, "open", timeout=60)
        chain_task = int(opened["chain_task_id"])

        local_trainer, cluster_trainer = TRAINERS[:2]
        c.start_worker("trainer", local_trainer)
        c.start_worker("trainer", cluster_trainer, "--dask", cluster.address)
        c.start_worker("validator", VALIDATORS[0], "--dask", cluster.address)
        c.start_worker("validator", VALIDATORS[1], "--dask", cluster.address)
        c.start_worker("validator", VALIDATORS[2], "--dask", "local:2")

        # The dashboard's data, /api/workers and /metrics show which workers are cluster-backed.
        clusters: dict[str, Any] = {}

        async def all_reported() -> bool:
            status, body, _ = await c.api("GET", "/api/dashboard")
            assert status == 200, body
            clusters.clear()
            clusters.update({(w["address"], w["role"]): w.get("cluster") for w in body["workers"]})
            return (
                len(clusters) == 5
                and all(v is None or v["workers"] == 2 for v in clusters.values())
                and sum(v is not None for v in clusters.values()) == 4
            )

        await wait_until(all_reported, timeout=180, what="five workers, four on clusters of two, in the dashboard")
        assert clusters[(dev_account(local_trainer).address, "trainer")] is None
        assert clusters[(dev_account(cluster_trainer).address, "trainer")] == {"workers": 2, "threads": 2}
        assert clusters[(dev_account(VALIDATORS[2]).address, "validator")] == {"workers": 2, "threads": 2}
        # ...and the page itself, in a real headless Chromium, shows the clusters' size.
        driver = await asyncio.to_thread(_browser)
        try:
            await asyncio.to_thread(driver.get, c.url + "/")
            await asyncio.to_thread(
                _wait,
                lambda: driver.find_element("id", "workers").text.count("2 dask workers, 2 threads") == 4,
                60,
                "four cluster-backed workers",
            )
        finally:
            await asyncio.to_thread(driver.quit)
        status, listed, _ = await c.api("GET", "/api/workers", key=c.admin_key)
        assert status == 200 and sum(w["cluster"] is not None for w in listed["workers"]) == 4, listed
        status, metrics, _ = await c.api("GET", "/metrics")
        assert status == 200
        sizes = re.findall(r'^ethml_worker_cluster_workers\{role="(\w+)",worker="[^"]+"\} (\S+)$', metrics, re.M)
        assert sorted(sizes) == [("trainer", "2.0"), ("validator", "2.0"), ("validator", "2.0"), ("validator", "2.0")]

        async def submissions(revealed: bool) -> bool:
            subs = (await task(c, task_id))["submissions"]
            return len(subs) == 2 and all(s["revealed"] == revealed for s in subs)

        await wait_until(lambda: submissions(False), timeout=300, what="two commitments")
        await travel(c, 3601)  # past the submission deadline: the trainers reveal
        await wait_until(lambda: submissions(True), timeout=120, what="two reveals")
        info = await task_info(c.w3, c.deployment, chain_task)
        by_trainer = {s["trainer"]: s["sha256"] for s in info["submissions"]}
        public, _hidden = split_csv(sklearn_dataset_csv("wine"), 0.3, seed=2024)
        local = fit_and_claim(wine_spec(public), public, chain_task)
        assert by_trainer == {
            dev_account(local_trainer).address: local.sha256,
            dev_account(cluster_trainer).address: local.sha256,
        }

        await travel(c, 61)  # past the reveal window: the coordinator reveals the test set, the panel is drawn
        done = await wait_status(c, task_id, "accepted", timeout=300)
        assert len(done["panel"]) == 3 and all(p["state"] == "revealed" for p in done["panel"]), done["panel"]
        store = c.store()
        # Drawn with replacement: one job per validator, at its first seat, however many seats it holds.
        first_seats: dict[str, int] = {}
        for p in done["panel"]:
            first_seats.setdefault(p["validator"], p["seat"])
        on_shared_cluster = {dev_account(v).address for v in VALIDATORS[:2]} & set(first_seats)
        for job in (f"{chain_task}:validate:{seat}" for seat in first_seats.values()):
            result = await store.result(job)
            assert result is not None and result["ok"], (job, result)
            scores = result["detail"]["scores"]
            assert len(scores) == 2 and all(v > 0 for v in scores), result  # same scores as a local validator

        # The work did run on the shared LocalCluster: the cluster trainer's trees and its validators' scoring.
        records = await asyncio.to_thread(client.get_task_stream, start=started)
        keys = [r["key"] for r in records]
        assert any("_parallel_build_trees" in k for k in keys), keys
        # Each drawn validator of the shared cluster scores two submissions there.
        assert sum("_score_task" in k for k in keys) == 2 * len(on_shared_cluster), keys
    finally:
        await asyncio.to_thread(stack.close)
