"""GET /api/openapi.json: the API's OpenAPI 3.1 document (built by `ethml.coordinator.openapi` from
the schema types the handlers validate with)."""

from __future__ import annotations

from aiohttp import web

from ethml.coordinator.openapi import openapi_document

routes = web.RouteTableDef()


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
