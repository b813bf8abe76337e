"""The training platform's coordinator: `ethml serve` (REST API, Redis state and job queue, WebSocket
worker pool, dashboard) and `ethml worker` (runs training and validation jobs with its own key)."""
