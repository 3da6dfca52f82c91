"""The OpenAPI 3 document of the JSON API, generated from the route table and the proto
descriptors (the proto3 JSON mapping: int64 as strings, enums by name, maps as objects)."""
from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .routes import CARD, NDJSON, PATH_PARAM, ROUTES, SSE
from .status import HTTP_STATUS

_F = FieldDescriptor
_SCALARS = {
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_INT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _F.TYPE_UINT32: {"type": "integer", "format": "int64"},
    _F.TYPE_INT64: {"type": "string", "format": "int64"},   # proto3 JSON: 64-bit as strings
    _F.TYPE_SINT64: {"type": "string", "format": "int64"},
    _F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
ERROR = "Status"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _value_schema(field: FieldDescriptor, schemas: dict) -> dict:
    if field.enum_type is not None:
        _add_enum(field.enum_type, schemas)
        return _ref(field.enum_type.name)
    if field.message_type is not None:
        _add_message(field.message_type, schemas)
        return _ref(field.message_type.name)
    return dict(_SCALARS[field.type])


def _field_schema(field: FieldDescriptor, schemas: dict) -> dict:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value = _value_schema(message.fields_by_name["value"], schemas)
        return {"type": "object", "additionalProperties": value}
    schema = _value_schema(field, schemas)
    if field.is_repeated:
        return {"type": "array", "items": schema}
    return schema


def _add_enum(enum, schemas: dict) -> None:
    schemas.setdefault(enum.name, {"type": "string", "enum": [v.name for v in enum.values]})


def _add_message(message: Descriptor, schemas: dict) -> None:
    if message.name in schemas:
        return
    schemas[message.name] = schema = {"type": "object", "additionalProperties": False,
                                      "properties": {}}
    for field in message.fields:
        schema["properties"][field.name] = _field_schema(field, schemas)


def _query_parameters(message: Descriptor, schemas: dict) -> list[dict]:
    params = []
    for field in message.fields:
        if field.name == PATH_PARAM:
            continue
        schema = _field_schema(field, schemas)
        if schema.get("type") == "object":  # a map: name[key]=value
            params.append({"name": field.name, "in": "query", "style": "deepObject",
                           "explode": True, "schema": schema})
        else:
            params.append({"name": field.name, "in": "query", "schema": schema,
                           **({"explode": True} if schema.get("type") == "array" else {})})
    return params


def _responses(route, schemas: dict) -> dict:
    output = route.method_descriptor.output_type
    _add_message(output, schemas)
    if route.kind == SSE:
        ok = {"description": "text/event-stream: `id:` the revision, `data:` a WatchEvent "
                             "as JSON; `event: status` carries the Status that ends the stream",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    elif route.kind == NDJSON:
        ok = {"description": 'one {"result": HeartbeatResponse} line per request line',
              "content": {"application/x-ndjson": {"schema": _ref(output.name)}}}
    elif route.kind == CARD:
        ok = {"description": "the A2A Agent Card (JSON) the agent registered with",
              "content": {"application/json": {"schema": {"type": "object"}}}}
    else:
        ok = {"description": output.name,
              "content": {"application/json": {"schema": _ref(output.name)}}}
    error = {"content": {"application/json": {"schema": _ref(ERROR)}}}
    codes = sorted({HTTP_STATUS[c] for c in HTTP_STATUS if HTTP_STATUS[c] >= 400})
    described = {400: "invalid argument (the message names the field), malformed JSON or "
                      "an unknown field",
                 401: "no valid bearer token", 403: "the token's scope or namespace does not "
                 "allow it", 404: "not found", 429: "resource exhausted", 503: "unavailable "
                 "(Redis unreachable or the server draining); retry"}
    responses = {"200": ok}
    for code in codes:
        if code in described:
            responses[str(code)] = dict(error, description=described[code])
    responses["default"] = dict(error, description="another gRPC status (grpc-gateway mapping)")
    return responses


def document(title: str = "Service Registry", version: str = "v1") -> dict:
    schemas: dict = {ERROR: {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "integer", "description": "the gRPC status code"},
                       "message": {"type": "string"},
                       "details": {"type": "array", "items": {"type": "object"}}}}}
    paths: dict = {}
    for route in ROUTES:
        request = route.method_descriptor.input_type
        operation = {"operationId": route.operation_id, "summary": route.summary,
                     "tags": ["ServiceRegistry"], "responses": _responses(route, schemas)}
        params = [{"name": PATH_PARAM, "in": "path", "required": True,
                   "description": 'the full id "namespace/name"; the slash may be sent as is '
                                  "or as %2F", "schema": {"type": "string"}}
                  for _ in route.path_params]
        if route.body:
            _add_message(request, schemas)
            media = "application/x-ndjson" if route.kind == NDJSON else "application/json"
            operation["requestBody"] = {"required": False,
                                        "content": {media: {"schema": _ref(request.name)}}}
        else:
            params += _query_parameters(request, schemas)
        if route.kind == SSE:
            params += [{"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
                        "description": "resume after this revision (as since_revision)"},
                       {"name": "access_token", "in": "query", "schema": {"type": "string"},
                        "description": "the bearer token, for EventSource (no headers)"}]
        if params:
            operation["parameters"] = params
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": version,
                 "description": "The ServiceRegistry gRPC API over HTTP/JSON (proto3 JSON "
                                "mapping, proto field names). Generated from the proto "
                                "descriptors and the server's route table."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
