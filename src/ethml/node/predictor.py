"""Predictor: each request's registered model (artifact hash checked against the registry) on its data
point; the round's answer vector, one answer per request."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from ethml.chain.rounds import INVALID_INPUT
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
            job = await self.ctx.next(self.inq)
            if job is None:
                return
            if job.is_cancelled:
                continue
            await self.predict(job)
            if not job.is_cancelled:
                await self.out.put(job)

    async def preload(self) -> None:
        """Load every registered model this node has before the first request needs it."""
        try:
            count = int(await self.ctx.registry.functions.modelCount().call())
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
        sha, kind, decimals, features, _active, cid = await self.ctx.registry.functions.getModel(model_id).call()
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
        """The answer vector: each request answered on its own; a data point or model that cannot be used
        makes only its own answer INVALID_INPUT."""
        answers = []
        for j, request_id in enumerate(job.request_ids):
            data = job.datas[j] if j < len(job.datas) else None
            reason = job.invalid_reasons[j] if j < len(job.invalid_reasons) else ""
            answers.append(await self.predict_one(request_id, job.model_ids[j], data, reason))
        job.answers = answers

    async def predict_one(self, request_id: int, model_id: int, data: bytes | None, reason: str) -> int:
        if data is None:
            return self._invalid(request_id, reason or "no data")
        try:
            model = await self.model(model_id)
        except (ModelError, IpfsError) as exc:
            return self._invalid(request_id, f"model {model_id} unavailable: {exc}")
        try:
            prediction = await self.ctx.models.predict(model, data)
        except InvalidInput as exc:
            return self._invalid(request_id, str(exc))
        except EthmlError as exc:
            return self._invalid(request_id, f"prediction failed: {exc}")
        self.ctx.emit(PredictionReady(request_id, prediction, False))
        self.ctx.log.info("prediction_ready", request_id=request_id, prediction=prediction)
        return prediction

    def _invalid(self, request_id: int, reason: str) -> int:
        self.ctx.emit(PredictionReady(request_id, INVALID_INPUT, True, reason))
        self.ctx.log.warning("invalid_input", request_id=request_id, reason=reason)
        return INVALID_INPUT
