"""A2A Agent Cards given to Register: validation, and what the registry derives from a card.

The fields checked are those of the A2A protocol's `AgentCard` (v1.0, JSON in camelCase):
name, description, version, supportedInterfaces (url, protocolBinding), provider,
capabilities, securitySchemes, defaultInputModes, defaultOutputModes and skills (id, name,
description, tags, examples). Other fields are kept as given (the card is stored whole), within
the size bound. Every error names the JSON path, e.g. `agent_card.skills[2].tags[0]`.

From a valid card: each skill id becomes the capability `skill:<id>` and each tag `tag:<tag>`
(whitespace inside a tag becomes '-'), so Discover finds agents by skill and tag; the first
interface's url is the endpoint unless the request gives one.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .validation import MAX_CAPABILITY_LEN, MAX_SHORT_LEN, InvalidArgument, capabilities

FIELD = "agent_card"
MAX_CARD_BYTES = 16384
MAX_SKILLS = 32
MAX_TAGS_PER_SKILL = 16
MAX_EXAMPLES_PER_SKILL = 16
MAX_INTERFACES = 8
MAX_MODES = 16
MAX_CARD_CAPABILITIES = 64       # given plus derived
MAX_NAME_LEN = 256
MAX_DESCRIPTION_LEN = 4096
MAX_URL_LEN = 256                # the endpoint's limit
SKILL_PREFIX = "skill:"
TAG_PREFIX = "tag:"
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Card:
    json: str                    # compact re-serialisation, as stored and returned
    capabilities: list[str]      # skill:<id> and tag:<tag>
    endpoint: str                # url of the first supported interface
    version: str


def _string(value, path: str, limit: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{path}: must be a string")
    if required and not value.strip():
        raise InvalidArgument(f"{path}: must not be empty")
    if len(value) > limit:
        raise InvalidArgument(f"{path}: longer than {limit} characters")
    return value


def _list(value, path: str, limit: int, required: bool = True) -> list:
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise InvalidArgument(f"{path}: must be a list")
    if len(value) > limit:
        raise InvalidArgument(f"{path}: {len(value)} given, at most {limit}")
    return value


def _object(value, path: str, required: bool = True) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{path}: must be an object")
    return value


def _strings(value, path: str, limit: int, item_limit: int, required: bool = True) -> list[str]:
    items = _list(value, path, limit, required)
    return [_string(v, f"{path}[{i}]", item_limit) for i, v in enumerate(items)]


def _derived(prefix: str, value: str, path: str) -> str:
    cap = prefix + value
    try:
        capabilities([cap], path)
    except InvalidArgument:
        raise InvalidArgument(
            f"{path}: {value[:80]!r} does not make a capability {prefix}<...> (letters, digits "
            f"and '._:/+#-', at most {MAX_CAPABILITY_LEN - len(prefix)} characters)") from None
    return cap


def _skill(skill, path: str) -> list[str]:
    skill = _object(skill, path)
    caps = [_derived(SKILL_PREFIX, _string(skill.get("id"), f"{path}.id", MAX_CAPABILITY_LEN),
                     f"{path}.id")]
    _string(skill.get("name"), f"{path}.name", MAX_NAME_LEN)
    _string(skill.get("description"), f"{path}.description", MAX_DESCRIPTION_LEN)
    tags = _strings(skill.get("tags"), f"{path}.tags", MAX_TAGS_PER_SKILL, MAX_CAPABILITY_LEN)
    for i, tag in enumerate(tags):
        caps.append(_derived(TAG_PREFIX, _SPACES.sub("-", tag.strip()), f"{path}.tags[{i}]"))
    _strings(skill.get("examples"), f"{path}.examples", MAX_EXAMPLES_PER_SKILL,
             MAX_DESCRIPTION_LEN, required=False)
    for modes in ("inputModes", "outputModes"):
        _strings(skill.get(modes), f"{path}.{modes}", MAX_MODES, MAX_NAME_LEN, required=False)
    return caps


def _interface(interface, path: str) -> str:
    interface = _object(interface, path)
    url = _string(interface.get("url"), f"{path}.url", MAX_URL_LEN)
    _string(interface.get("protocolBinding"), f"{path}.protocolBinding", MAX_NAME_LEN)
    for optional in ("protocolVersion", "tenant"):
        _string(interface.get(optional), f"{path}.{optional}", MAX_NAME_LEN, required=False)
    return url


def parse(text: str, given: list[str]) -> Card:
    """Validates a card; `given` are the request's own (validated) capabilities, which count
    towards MAX_CARD_CAPABILITIES with the derived ones."""
    size = len(text.encode())
    if size > MAX_CARD_BYTES:
        raise InvalidArgument(f"{FIELD}: {size} bytes, at most {MAX_CARD_BYTES}")
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"{FIELD}: not JSON ({exc})") from None
    card = _object(card, FIELD)
    _string(card.get("name"), f"{FIELD}.name", MAX_NAME_LEN)
    _string(card.get("description"), f"{FIELD}.description", MAX_DESCRIPTION_LEN)
    version = _string(card.get("version"), f"{FIELD}.version", MAX_SHORT_LEN)
    interfaces = _list(card.get("supportedInterfaces"), f"{FIELD}.supportedInterfaces",
                       MAX_INTERFACES)
    if not interfaces:
        raise InvalidArgument(f"{FIELD}.supportedInterfaces: at least one is required")
    urls = [_interface(x, f"{FIELD}.supportedInterfaces[{i}]") for i, x in enumerate(interfaces)]
    provider = _object(card.get("provider"), f"{FIELD}.provider", required=False)
    if provider:
        _string(provider.get("organization"), f"{FIELD}.provider.organization", MAX_NAME_LEN)
        _string(provider.get("url"), f"{FIELD}.provider.url", MAX_URL_LEN)
    for flag, value in _object(card.get("capabilities"), f"{FIELD}.capabilities").items():
        if flag in ("streaming", "pushNotifications", "extendedAgentCard") \
                and not isinstance(value, bool):
            raise InvalidArgument(f"{FIELD}.capabilities.{flag}: must be true or false")
    schemes = _object(card.get("securitySchemes"), f"{FIELD}.securitySchemes", required=False)
    for name, scheme in schemes.items():
        _object(scheme, f"{FIELD}.securitySchemes.{name}")
    for modes in ("defaultInputModes", "defaultOutputModes"):
        _strings(card.get(modes), f"{FIELD}.{modes}", MAX_MODES, MAX_NAME_LEN)
    skills = card.get("skills")
    if isinstance(skills, list) and len(skills) > MAX_SKILLS:
        raise InvalidArgument(f"{FIELD}.skills: {len(skills)} skills, at most {MAX_SKILLS}")
    derived: list[str] = []
    for i, skill in enumerate(_list(skills, f"{FIELD}.skills", MAX_SKILLS)):
        derived += _skill(skill, f"{FIELD}.skills[{i}]")
    caps = sorted(set(derived))
    total = len(set(caps) | set(given))
    if total > MAX_CARD_CAPABILITIES:
        raise InvalidArgument(f"{FIELD}.skills: {total} capabilities with the skills' ids and "
                              f"tags, at most {MAX_CARD_CAPABILITIES}")
    return Card(json=json.dumps(card, separators=(",", ":"), ensure_ascii=False),
                capabilities=caps, endpoint=urls[0], version=version)
