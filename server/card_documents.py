"""The Agent Card documents an HTTP port serves (not mounted in this branch: gRPC GetAgent
returns the cards today).

    GET /v1/agents/{namespace}/{name}/agent-card.json -> await agent_card_json(store, f"{ns}/{name}")
    GET /.well-known/agent-card.json                  -> registry_card(base_url)

Both return JSON text (None: answer 404); the caller applies READ authorisation for the
agent's namespace first, as GetAgent does.
"""
from __future__ import annotations

import json
from importlib import metadata

from . import convert, validation
from .keys import FIELDS as F


async def agent_card_json(store, agent_id: str) -> str | None:
    """The card a live agent registered with; None when the agent is unknown, expired or has
    no card. Raises validation.InvalidArgument for a malformed id."""
    ref = validation.agent_ref(agent_id)
    flat = await store.scripts.get(keys=[ref.keys.agent(ref.name)])
    return convert.record(flat).get(F["agent_card"]) or None


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
