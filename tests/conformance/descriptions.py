"""Atlassian's own API descriptions, loaded for checking recorded exchanges against them.

`description(product, version)` opens the machine-readable description of that product and
version in `../shared/reference/specs/` (OpenAPI 3.0 for Jira 10.3/11.3, Confluence and
Bitbucket; Jersey WADL for Jira 9.12) and `check(exchange)` lists what in one exchange the
description does not declare: the path and method, query parameter names, places and types,
the request body (strictly: no field the schema does not name), the response status, and the
response body's shape. The schemas are applied with `openapi-schema-validator` (OpenAPI 3.0's
dialect of JSON Schema) and `jsonschema` (the WADL's draft-04 schemas). The generator defects
SOURCES.md lists are tolerated here, each where it is handled: a collection answered where the
item schema is declared (`_check_body`), `{}` schemas (nothing to check), 204 with a schema
(no body sent, nothing checked), and query parameters declared `in: path` (`_parameters`).
The Confluence JSON-RPC remote API is checked against its WSDL (method name and arity); the
other endpoints no description covers are named in `UNDESCRIBED`.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from usersync_sandbox.faults import Exchange

#: The descriptions, beside the repository (tests may read them; the project copies none).
SPECS_DIR = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "specs"
).resolve()

#: (product, major.minor) → the description file of that version.
DESCRIPTION_FILES: dict[tuple[str, tuple[int, int]], str] = {
    ("jira", (9, 12)): "jira-dc-9.12.0.wadl",
    ("jira", (10, 3)): "jira-dc-10.3.24.json",
    ("jira", (11, 3)): "jira-dc-11.3.8.json",
    ("confluence", (9, 3)): "confluence-dc-9.3.1.json",
    ("confluence", (10, 0)): "confluence-dc-10.0.3.json",
    ("confluence", (10, 2)): "confluence-dc-10.2.14.json",
    ("bitbucket", (9, 4)): "bitbucket-dc-9.4.json",
    ("bitbucket", (10, 4)): "bitbucket-dc-10.4.json",
}
CONFLUENCE_RPC_WSDL = "confluence-rpc-confluenceservice-v2.wsdl"
JSONRPC_PATH = "/rpc/json-rpc/confluenceservice-v2"

#: Endpoints usersync uses that no machine-readable description covers (SOURCES.md), with the
#: reading the client and the sandbox take; exchanges on them are counted, not checked.
UNDESCRIBED: dict[tuple[str, str], str] = {
    ("confluence", r"/rest/license/1\.0/license/(maxUsers|userCount|remainingSeats)"): (
        "Confluence's licensing-plugin resource (UserCountResource, CONFSERVER-37100): "
        '{"count": n}; maxUsers is Integer.MAX_VALUE (or -1) when unlimited'
    ),
    ("confluence", r"/rest/applinks/1\.0/manifest"): (
        "the Application Links manifest every Atlassian product serves anonymously: "
        "<version>, <buildNumber> (XML by default, JSON when asked)"
    ),
}

_WADL = {"w": "http://wadl.dev.java.net/2009/02"}
_XHTML = "{http://www.w3.org/1999/xhtml}"
_WSDL = {"wsdl": "http://schemas.xmlsoap.org/wsdl/"}
_METHODS = ("get", "post", "put", "delete", "patch", "head", "options")
_WADL_TYPES = {"xs:int": "integer", "xs:long": "integer", "xs:boolean": "boolean"}


@dataclass(frozen=True)
class Violation:
    """One thing an exchange does that its description does not declare.

    `side` is "client" for what was sent (path, method, query, request body) and "sandbox"
    for what was answered (status, response body); `name` is the query parameter or body
    field concerned, where there is one.
    """

    product: str
    version: str
    method: str
    template: str
    side: str
    kind: str
    detail: str
    name: str = ""

    def __str__(self) -> str:
        named = f" [{self.name}]" if self.name else ""
        return (
            f"{self.product} {self.version} {self.method} {self.template}: {self.side} "
            f"{self.kind}{named}: {self.detail}"
        )


@dataclass
class Parameter:
    name: str
    location: str
    required: bool
    schema: dict[str, Any]
    #: JSON pointer of the schema in the OpenAPI document; "" for WADL (inline types)
    pointer: str = ""


@dataclass
class Response:
    #: None when nothing is declared about the body
    schema: dict[str, Any] | None = None
    pointer: str = ""


@dataclass
class Operation:
    method: str
    template: str
    parameters: dict[tuple[str, str], Parameter] = field(default_factory=dict)
    #: None: no request body declared
    request_schema: dict[str, Any] | None = None
    request_pointer: str = ""
    request_required: bool = False
    #: status ("200", "default") → response; empty: no status declared at all
    responses: dict[str, Response] = field(default_factory=dict)

    def segments(self) -> list[str]:
        return [s for s in self.template.split("/") if s]


class Description:
    """One product version's description: its operations and how to check an exchange."""

    def __init__(self, product: str, version: str, operations: list[Operation]) -> None:
        self.product = product
        self.version = version
        self.operations = operations
        self._patterns = [(re.compile(_template_regex(op.template)), op) for op in operations]

    # -- finding the operation -----------------------------------------------------------

    def find(self, method: str, path: str) -> tuple[Operation | None, list[Operation]]:
        """(the operation for method and path, every operation on that path); Jersey's choice:
        the template with the most literal segments wins."""
        on_path = [op for rx, op in self._patterns if rx.fullmatch(path)]
        with_method = [op for op in on_path if op.method == method.upper()]
        if not with_method:
            return None, on_path
        return max(with_method, key=_literal_weight), on_path

    # -- checking ------------------------------------------------------------------------

    def check(self, exchange: Exchange, path: str) -> list[Violation]:
        """What `exchange` (on the description's `path`) does that is not declared."""
        operation, on_path = self.find(exchange.method, path)
        if operation is None:
            kind, template = ("method", on_path[0].template) if on_path else ("path", path)
            declared = sorted({op.method for op in on_path})
            detail = (
                f"not declared (declared: {', '.join(declared)})" if declared else "no such path"
            )
            return [self._violation(exchange, template, "client", kind, detail)]
        found: list[Violation] = []
        found += self._check_query(exchange, operation)
        found += self._check_request_body(exchange, operation)
        found += self._check_response(exchange, operation)
        return found

    def _violation(
        self, exchange: Exchange, template: str, side: str, kind: str, detail: str, name: str = ""
    ) -> Violation:
        return Violation(
            self.product, self.version, exchange.method, template, side, kind, detail, name
        )

    def _check_query(self, exchange: Exchange, op: Operation) -> list[Violation]:
        found = []
        query = {name: [] for name, _ in exchange.query}
        for name, value in exchange.query:
            query[name].append(value)
        for name, values in query.items():
            parameter = op.parameters.get(("query", name))
            if parameter is None:
                elsewhere = [loc for loc, n in op.parameters if n == name]
                detail = f"declared in {elsewhere[0]}" if elsewhere else "not declared"
                found.append(
                    self._violation(exchange, op.template, "client", "query", detail, name)
                )
                continue
            for value in values:
                problem = self._value_problem(parameter, value)
                if problem:
                    found.append(
                        self._violation(exchange, op.template, "client", "query", problem, name)
                    )
        for (location, name), parameter in op.parameters.items():
            if location == "query" and parameter.required and name not in query:
                found.append(
                    self._violation(
                        exchange, op.template, "client", "query", "required, not sent", name
                    )
                )
        return found

    def _value_problem(self, parameter: Parameter, value: str) -> str | None:
        schema, pointer = parameter.schema, parameter.pointer
        kind = schema.get("type")
        if kind == "array":
            schema, pointer = schema.get("items") or {}, pointer and f"{pointer}/items"
            kind = schema.get("type")
        coerced: Any = value
        if kind in ("integer", "number"):
            try:
                coerced = int(value) if kind == "integer" else float(value)
            except ValueError:
                return f"{value!r} is not {'an integer' if kind == 'integer' else 'a number'}"
        elif kind == "boolean":
            if value.lower() not in ("true", "false"):
                return f"{value!r} is not a boolean"
            coerced = value.lower() == "true"
        errors = self._errors(schema, pointer, coerced, strict=False)
        return errors[0] if errors else None

    def _check_request_body(self, exchange: Exchange, op: Operation) -> list[Violation]:
        body = exchange.request_body
        if op.request_schema is None:
            if body not in (None, ""):
                return [
                    self._violation(
                        exchange, op.template, "client", "request body", "sent, none declared"
                    )
                ]
            return []
        if body in (None, ""):
            if op.request_required:
                return [
                    self._violation(
                        exchange, op.template, "client", "request body", "required, not sent"
                    )
                ]
            return []
        return [
            self._violation(exchange, op.template, "client", "request body", problem, name)
            for name, problem in self._body_errors(
                op.request_schema, op.request_pointer, body, strict=True
            )
        ]

    def _check_response(self, exchange: Exchange, op: Operation) -> list[Violation]:
        if not op.responses:
            return []  # the description declares no status for this operation
        status = str(exchange.status)
        response = op.responses.get(status) or op.responses.get("default")
        if response is None:
            declared = ", ".join(sorted(op.responses))
            return [
                self._violation(
                    exchange, op.template, "sandbox", "status", f"{status} (declared: {declared})"
                )
            ]
        body = exchange.response_body
        if response.schema is None or body in (None, "") or not (200 <= exchange.status < 300):
            # Error bodies are the product's generic envelope; the descriptions mostly give
            # none, or a generic one the sandbox's differs from only in wording.
            return []
        return [
            self._violation(exchange, op.template, "sandbox", "response body", problem, name)
            for name, problem in _tolerating_item_for_array(
                lambda value: self._body_errors(response.schema, response.pointer, value),
                response.schema,
                self._resolve(response.schema, response.pointer),
                body,
            )
        ]

    def _body_errors(
        self, schema: dict[str, Any], pointer: str, body: Any, *, strict: bool = False
    ) -> list[tuple[str, str]]:
        return [
            (_error_name(error), _error_text(error))
            for error in self._validator(schema, pointer, strict).iter_errors(body)
        ]

    def _errors(
        self, schema: dict[str, Any], pointer: str, value: Any, *, strict: bool
    ) -> list[str]:
        return [_error_text(e) for e in self._validator(schema, pointer, strict).iter_errors(value)]

    # -- per format ----------------------------------------------------------------------

    def _validator(self, schema: dict[str, Any], pointer: str, strict: bool) -> Any:
        raise NotImplementedError

    def _resolve(self, schema: dict[str, Any], pointer: str) -> dict[str, Any]:
        return schema


class OpenApiDescription(Description):
    """An OpenAPI 3.0 document; schemas are checked with openapi-schema-validator."""

    def __init__(self, product: str, version: str, document: dict[str, Any]) -> None:
        self.document = document
        self._registries = {
            False: _registry(document),
            True: _registry(_strict_copy(document)),
        }
        self._validators: dict[tuple[str, bool], Any] = {}
        super().__init__(product, version, list(_openapi_operations(document)))

    def _validator(self, schema: dict[str, Any], pointer: str, strict: bool) -> Any:
        if not pointer:
            return OAS30Validator(schema)  # an inline schema without a place in the document
        key = (pointer, strict)
        if key not in self._validators:
            self._validators[key] = OAS30Validator(
                {"$ref": f"{_SPEC_URI}#{pointer}"}, registry=self._registries[strict]
            )
        return self._validators[key]

    def _resolve(self, schema: dict[str, Any], pointer: str) -> dict[str, Any]:
        node = schema
        for _ in range(10):
            ref = node.get("$ref") if isinstance(node, dict) else None
            if not ref:
                return node
            node = _pointer_get(self.document, ref.removeprefix("#"))
        return node


class WadlDescription(Description):
    """A Jersey WADL; its JSON examples' draft-04 schemas are checked with jsonschema."""

    def __init__(self, product: str, version: str, operations: list[Operation]) -> None:
        self._validators: dict[tuple[int, bool], Any] = {}
        super().__init__(product, version, operations)

    def _validator(self, schema: dict[str, Any], pointer: str, strict: bool) -> Any:
        key = (id(schema), strict)
        if key not in self._validators:
            # Requests as declared (these schemas forbid undeclared fields); answers without
            # that: a bean's `expand` and the like are generated outside the schema.
            use = schema if strict else _relaxed(schema)
            self._validators[key] = jsonschema.Draft4Validator(use)
        return self._validators[key]


# -- loading ---------------------------------------------------------------------------------


def description_file(product: str, version: str) -> Path:
    """The description of `product` at `version` (by major.minor)."""
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    name = DESCRIPTION_FILES.get((product, numbers))  # type: ignore[arg-type]
    if name is None:
        raise KeyError(f"no API description of {product} {version}")
    return SPECS_DIR / name


@cache
def description(product: str, version: str) -> Description:
    """The loaded description of `product` at `version`."""
    path = description_file(product, version)
    if path.suffix == ".wadl":
        return WadlDescription(product, version, list(_wadl_operations(path)))
    return OpenApiDescription(product, version, json.loads(path.read_text(encoding="utf-8")))


@cache
def rpc_methods() -> dict[str, set[int]]:
    """Confluence remote API: operation name → its arities, without the session token."""
    root = ET.parse(SPECS_DIR / CONFLUENCE_RPC_WSDL).getroot()
    arities: dict[str, set[int]] = {}
    for port_type in root.findall("wsdl:portType", _WSDL):
        for operation in port_type.findall("wsdl:operation", _WSDL):
            order = operation.attrib.get("parameterOrder", "").split()
            arities.setdefault(operation.attrib["name"], set()).add(max(len(order) - 1, 0))
    return arities


def _openapi_operations(document: dict[str, Any]) -> Iterator[Operation]:
    for template, item in document.get("paths", {}).items():
        base = f"/paths/{_escape(template)}"
        shared = item.get("parameters") or []
        for method, raw in item.items():
            if method not in _METHODS:
                continue
            where = f"{base}/{method}"
            op = Operation(method.upper(), template)
            for index, parameter in enumerate(shared):
                _add_parameter(document, op, parameter, f"{base}/parameters/{index}")
            for index, parameter in enumerate(raw.get("parameters") or []):
                _add_parameter(document, op, parameter, f"{where}/parameters/{index}")
            body = raw.get("requestBody")
            if body is not None:
                body_where = f"{where}/requestBody"
                if "$ref" in body:
                    body_where = body["$ref"].removeprefix("#")
                    body = _pointer_get(document, body_where)
                media, content = _json_content(body.get("content") or {})
                op.request_schema = content.get("schema", {}) if content is not None else {}
                op.request_pointer = f"{body_where}/content/{_escape(media)}/schema"
                op.request_required = bool(body.get("required"))
            for status, response in (raw.get("responses") or {}).items():
                response_where = f"{where}/responses/{_escape(str(status))}"
                if "$ref" in response:
                    response_where = response["$ref"].removeprefix("#")
                    response = _pointer_get(document, response_where)
                media, content = _json_content(response.get("content") or {})
                if content is None or "schema" not in content:
                    op.responses[str(status)] = Response()
                else:
                    op.responses[str(status)] = Response(
                        content["schema"], f"{response_where}/content/{_escape(media)}/schema"
                    )
            yield op


def _add_parameter(document: dict, op: Operation, parameter: dict, pointer: str) -> None:
    if "$ref" in parameter:
        pointer = parameter["$ref"].removeprefix("#")
        parameter = _pointer_get(document, pointer)
    location = parameter.get("in", "query")
    name = parameter["name"]
    if location == "path" and "{" + name + "}" not in op.template:
        # Generator defect (SOURCES.md): a query parameter declared `in: path`.
        location = "query"
    if location not in ("query", "path"):
        return  # headers and cookies are not recorded
    op.parameters[(location, name)] = Parameter(
        name,
        location,
        bool(parameter.get("required")),
        parameter.get("schema") or {},
        f"{pointer}/schema" if "schema" in parameter else "",
    )


def _json_content(content: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    for media, value in content.items():
        if "json" in media:
            return media, value
    for media, value in content.items():
        return media, value
    return "", None


def _wadl_operations(path: Path) -> Iterator[Operation]:
    root = ET.parse(path).getroot()

    def walk(resource: ET.Element, prefix: str, inherited: list[ET.Element]) -> Iterator[Operation]:
        segment = resource.attrib.get("path", "").strip("/")
        here = f"{prefix}/{segment}" if segment else prefix
        params = inherited + resource.findall("w:param", _WADL)
        for method in resource.findall("w:method", _WADL):
            yield _wadl_operation(here, method, params)
        for child in resource.findall("w:resource", _WADL):
            yield from walk(child, here, params)

    for resources in root.findall("w:resources", _WADL):
        for resource in resources.findall("w:resource", _WADL):
            yield from walk(resource, "", [])


def _wadl_operation(template: str, method: ET.Element, params: list[ET.Element]) -> Operation:
    op = Operation(method.attrib["name"].upper(), re.sub(r"/+", "/", "/" + template))
    request = method.find("w:request", _WADL)
    declared = list(params) + (request.findall("w:param", _WADL) if request is not None else [])
    for param in declared:
        style = param.attrib.get("style")
        if style == "template":
            location = "path"
        elif style == "query":
            location = "query"
        else:
            continue
        kind = _WADL_TYPES.get(param.attrib.get("type", ""), "string")
        op.parameters[(location, param.attrib["name"])] = Parameter(
            param.attrib["name"], location, False, {"type": kind}
        )
    if request is not None:
        for representation in request.findall("w:representation", _WADL):
            op.request_schema = _wadl_schema(representation) or {}
    for response in method.findall("w:response", _WADL):
        for status in response.attrib.get("status", "").split():
            schemas = [_wadl_schema(r) for r in response.findall("w:representation", _WADL)]
            schema = next((s for s in schemas if s), None)
            op.responses[status] = Response(schema)
    return op


def _wadl_schema(representation: ET.Element) -> dict[str, Any] | None:
    """The JSON schema Jira's WADL embeds in a representation's doc (an h6 "Schema" block)."""
    for doc in representation.findall("w:doc", _WADL):
        for paragraph in doc.iter(f"{_XHTML}p"):
            heading = paragraph.find(f"{_XHTML}h6")
            code = paragraph.find(f"{_XHTML}pre/{_XHTML}code")
            if heading is not None and heading.text == "Schema" and code is not None:
                try:
                    return json.loads("".join(code.itertext()))
                except ValueError:
                    return None
    return None


# -- schema helpers --------------------------------------------------------------------------

_SPEC_URI = "urn:usersync:api-description"


def _registry(document: dict[str, Any]) -> Registry:
    return Registry().with_resource(_SPEC_URI, Resource(contents=document, specification=DRAFT4))


def _strict_copy(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every object schema that names its properties closed to others:
    request bodies are checked strictly (SOURCES.md), though the generator never says so."""
    strict = copy.deepcopy(document)
    for node in _walk(strict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
    return strict


def _relaxed(schema: dict[str, Any]) -> dict[str, Any]:
    relaxed = copy.deepcopy(schema)
    for node in _walk(relaxed):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
    return relaxed


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _tolerating_item_for_array(
    errors_of: Any, schema: dict[str, Any], resolved: dict[str, Any], body: Any
) -> Iterable[tuple[str, str]]:
    """Generator defect (SOURCES.md): a collection answered where the item schema is declared;
    each element is then checked against the item schema."""
    if isinstance(body, list) and resolved.get("type") != "array":
        return [problem for item in body for problem in errors_of(item)]
    return errors_of(body)


def _error_name(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' (?:was|were) unexpected", error.message)
        if extra:
            return extra[0]
    return ".".join(str(p) for p in error.absolute_path)


def _error_text(error: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{error.message}" + (f" (at {where})" if where else "")


def _template_regex(template: str) -> str:
    return re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template.rstrip("/") or "/"))


def _literal_weight(op: Operation) -> tuple[int, int]:
    segments = op.segments()
    literal = [s for s in segments if not s.startswith("{")]
    return len(literal), sum(len(s) for s in literal)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _pointer_get(document: Any, pointer: str) -> Any:
    node = document
    for part in pointer.strip("/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
