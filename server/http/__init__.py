"""The server's HTTP port: /metrics, health, the JSON API, the SSE watch and the dashboard,
one aiohttp application in the gRPC server's event loop (app.py)."""
