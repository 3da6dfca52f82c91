"""The registry's own A2A Agent Card, served at /.well-known/agent-card.json (server/http/app.py).
An agent's card is served by the route table (GET /v1/agents/{agent_id}/agent-card.json).
"""
from __future__ import annotations

import json
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("service-registry")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def registry_card(base_url: str) -> str:
    """The registry's own card: its skills are its discovery functions, its interface the HTTP
    port at `base_url` (e.g. "https://registry.example.com")."""
    skill = lambda sid, name, description, tags, examples: {  # noqa: E731
        "id": sid, "name": name, "description": description, "tags": tags,
        "examples": examples}
    card = {
        "name": "Service Registry",
        "description": "Registry of agents: registration with leases, health-ranked or "
                       "load-balanced discovery by capability, A2A skill and tag, and watches.",
        "version": _version(),
        "supportedInterfaces": [{"url": base_url.rstrip("/"), "protocolBinding": "HTTP+JSON",
                                 "protocolVersion": "1.0"}],
        "capabilities": {"streaming": False, "pushNotifications": False},
        "defaultInputModes": ["application/json"],
        "defaultOutputModes": ["application/json"],
        "skills": [
            skill("discover-agents", "Discover agents",
                  "Live agents having every capability asked for (skill:<id> and tag:<tag> "
                  "for A2A skills and tags), healthiest first or load-balanced.",
                  ["discovery", "registry"], ["agents with skill:translate and tag:german"]),
            skill("agent-card", "Agent Card of an agent",
                  "The A2A Agent Card a registered agent published.",
                  ["a2a", "agent-card"], ["/v1/agents/default/4f1c2e9a/agent-card.json"]),
        ],
    }
    return json.dumps(card, separators=(",", ":"))
