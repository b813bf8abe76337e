"""Predictor: the registered model (artifact hash checked against the registry) on the data point."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from ethml.chain.deploy import INVALID_INPUT
from ethml.errors import EthmlError, InvalidInput, IpfsError, ModelError
from ethml.ml import LoadedModel, ModelEntry, load_untrusted
from ethml.node.context import NodeContext
from ethml.node.events import PredictionReady
from ethml.node.jobs import Job

MODEL_SIZE_LIMIT = 64 * 1024 * 1024


class Predictor:
    def __init__(self, ctx: NodeContext, inq: asyncio.Queue[Job], out: asyncio.Queue[Job]) -> None:
        self.ctx = ctx
        self.inq = inq
        self.out = out
        self._models: dict[int, LoadedModel] = {}

    async def run(self) -> None:
        await self.preload()
        while True:
            job = await self.inq.get()
            if job.is_cancelled:
                continue
            await self.predict(job)
            if not job.is_cancelled:
                await self.out.put(job)

    async def preload(self) -> None:
        """Load every registered model this node has before the first request needs it."""
        try:
            count = int(await self.ctx.contract.functions.modelCount().call())
        except Exception as exc:  # noqa: BLE001 - preloading is an optimisation; requests load lazily
            self.ctx.log.info("preload_skipped", error=str(exc))
            return
        loaded = []
        for model_id in range(1, count + 1):
            try:
                model = await self.model(model_id, fetch=False)
            except (ModelError, IpfsError):
                continue
            except Exception as exc:  # noqa: BLE001 - an RPC outage at start: requests load models lazily
                self.ctx.log.info("preload_stopped", model_id=model_id, error=str(exc))
                return
            # One prediction warms the model's code paths and the thread pool.
            raw = json.dumps([0.0] * model.entry.feature_count).encode()
            with contextlib.suppress(EthmlError):
                await self.ctx.models.predict(model, raw)
            loaded.append(model_id)
        self.ctx.log.info("models_preloaded", models=loaded, registered=count)

    async def model(self, model_id: int, *, fetch: bool = True) -> LoadedModel:
        """Loaded once per model id: the registry's artifact hash decides which artifact is acceptable."""
        cached = self._models.get(model_id)
        if cached is not None:
            return cached
        cid, sha, kind, decimals, features, _active = await self.ctx.contract.functions.getModel(model_id).call()
        sha_hex = bytes(sha).hex()
        entry = self.ctx.models.manifest.by_sha256(sha_hex)
        if entry is not None:
            loaded = self.ctx.models.get(entry.name, sha_hex)
        else:
            if not fetch:
                raise ModelError(f"model {model_id} is not bundled")
            # Not bundled: fetch the artifact and load it only through the skops allow-list.
            blob = await self.ctx.ipfs.cat(cid, max_size=MODEL_SIZE_LIMIT)
            name = f"model-{model_id}"
            estimator: Any = await asyncio.to_thread(load_untrusted, blob, name, sha_hex)
            kind_name = "classification" if int(kind) == 0 else "regression"
            entry = ModelEntry(model_id, name, kind_name, int(decimals), int(features), "", sha_hex, cid)
            loaded = LoadedModel(entry, estimator)
        if loaded.entry.feature_count != int(features):
            raise ModelError(
                f"model {model_id}: registry says {features} features, artifact takes {loaded.entry.feature_count}"
            )
        self._models[model_id] = loaded
        return loaded

    async def predict(self, job: Job) -> None:
        if job.data is None:
            self._invalid(job, job.invalid_reason or "no data")
            return
        try:
            model = await self.model(job.model_id)
        except (ModelError, IpfsError) as exc:
            self._invalid(job, f"model {job.model_id} unavailable: {exc}")
            return
        try:
            job.prediction = await self.ctx.models.predict(model, job.data)
        except InvalidInput as exc:
            self._invalid(job, str(exc))
            return
        except EthmlError as exc:
            self._invalid(job, f"prediction failed: {exc}")
            return
        self.ctx.emit(PredictionReady(job.request_id, job.prediction, False))
        self.ctx.log.info("prediction_ready", request_id=job.request_id, prediction=job.prediction)

    def _invalid(self, job: Job, reason: str) -> None:
        job.prediction = INVALID_INPUT
        job.invalid_reason = reason
        self.ctx.emit(PredictionReady(job.request_id, INVALID_INPUT, True, reason))
        self.ctx.log.warning("invalid_input", request_id=job.request_id, reason=reason)
