"""Request messages from HTTP (JSON body, query string, path) and replies to JSON, in the
proto3 JSON mapping with the proto's own field names (as grpc-gateway)."""
from __future__ import annotations

import json

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from ..validation import InvalidArgument
from .routes import Route

_TRUE, _FALSE = ("true", "1"), ("false", "0")


def to_json(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def dumps(message: Message) -> str:
    return json.dumps(to_json(message), separators=(",", ":"))


def _parse(document, message: Message) -> Message:
    try:
        json_format.ParseDict(document, message)
    except json_format.ParseError as exc:
        # the first line names the field; the rest lists every field in camelCase
        raise InvalidArgument(str(exc).splitlines()[0]) from None
    return message


def from_body(route: Route, raw: bytes) -> Message:
    try:
        document = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"body: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"body: a JSON object {route.request_class.DESCRIPTOR.name} "
                              "is expected")
    return _parse(document, route.request_class())


def _scalar(field: FieldDescriptor, name: str, value: str):
    if field.type == FieldDescriptor.TYPE_BOOL:
        lowered = value.lower()
        if lowered in _TRUE or lowered == "":
            return True
        if lowered in _FALSE:
            return False
        raise InvalidArgument(f"{name}: {value!r} is not a boolean (true/false)")
    return value  # json_format reads numbers and enum names from strings


def from_query(route: Route, query, skip=()) -> Message:
    """Query parameters by field name; repeated fields by repeating the parameter, map entries
    as name[key]=value (grpc-gateway's form)."""
    descriptor = route.request_class.DESCRIPTOR
    document: dict = {}
    for key in set(query.keys()) - set(skip):
        values = query.getall(key)
        name, bracket, rest = key.partition("[")
        field = descriptor.fields_by_name.get(name)
        if field is not None and bracket and rest.endswith("]") and field.message_type \
                and field.message_type.GetOptions().map_entry:
            document.setdefault(name, {})[rest[:-1]] = values[-1]
        elif field is None or bracket or field.message_type is not None \
                or name in route.path_params:
            raise InvalidArgument(f"{key}: not a query parameter of {route.method} {route.path}")
        elif field.is_repeated:
            document[name] = [_scalar(field, key, v) for v in values]
        else:
            document[name] = _scalar(field, key, values[-1])
    return _parse(document, route.request_class())


def with_path(route: Route, message: Message, match_info) -> Message:
    """Path parameters go into their fields; a body that names another value is refused."""
    for name in route.path_params:
        value = match_info[name]
        given = getattr(message, name)
        if given and given != value:
            raise InvalidArgument(f"{name}: {given!r} in the body differs from {value!r} in "
                                  "the path")
        setattr(message, name, value)
    return message
