"""The coordinator's routes, one module (and one route table) per concern:

- `tasks`: POST /api/tasks, GET /api/tasks, GET /api/tasks/{id}, POST /api/tasks/import
- `files`: POST /api/files, GET /ipfs/{cid}
- `keys`: POST /api/keys
- `workers`: GET /api/workers, DELETE /api/workers/{id} (admin)
- `worker_socket`: GET /ws/worker, the workers' WebSocket (its login: `worker_login`)
- `health`: GET /healthz, GET /metrics
- `openapi`: GET /api/openapi.json
- `dashboard`: GET /, GET /api/dashboard, GET /api/dashboard/events
"""

from __future__ import annotations

from aiohttp import web

from ethml.coordinator.routes import dashboard, files, health, keys, openapi, tasks, worker_socket, workers

TABLES: tuple[web.RouteTableDef, ...] = (
    tasks.routes,
    files.routes,
    keys.routes,
    workers.routes,
    worker_socket.routes,
    health.routes,
    openapi.routes,
    dashboard.routes,
)
