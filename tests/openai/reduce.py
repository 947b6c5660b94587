"""OpenAI's OpenAPI document reduced to the operations this server serves.

    python tests/openai/reduce.py OPENAI_OPENAPI_JSON > tests/openai/openapi.json

Keeps those paths and the components they reach, nothing else; descriptions, examples and OpenAI's
documentation metadata are dropped (they are prose, and most of the document's size). Every schema
is kept as written: the conformance test reads `nullable` itself.
"""

from __future__ import annotations

import json
import sys

OPERATIONS = {
    "/chat/completions": ["post"],
    "/completions": ["post"],
    "/models": ["get"],
    "/models/{model}": ["get"],
    "/responses": ["post"],
    "/responses/{response_id}": ["get", "delete"],
}
PROSE = {"description", "summary", "example", "examples", "x-oaiMeta", "x-oaiExpandable", "x-oaiTypeLabel"}


def without_prose(node: object, in_properties: bool = False) -> object:
    """The node without its prose keys; a property that happens to be named like one stays."""
    if isinstance(node, list):
        return [without_prose(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: without_prose(value, key == "properties" and not in_properties)
        for key, value in node.items()
        if in_properties or key not in PROSE
    }


def references(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(references(item) for item in node))
    return set()


def reduce(document: dict) -> dict:
    paths = {path: {method: document["paths"][path][method] for method in kept} for path, kept in OPERATIONS.items()}
    components: dict[str, dict] = {}
    pending = references(paths)
    while pending:
        ref = pending.pop()
        _, _, section, name = ref.split("/")
        if name in components.setdefault(section, {}):
            continue
        components[section][name] = document["components"][section][name]
        pending |= references(components[section][name])
    reduced = {
        "openapi": document["openapi"],
        "info": {"title": document["info"]["title"], "version": document["info"]["version"]},
        "servers": [{"url": "/v1"}],
        "paths": paths,
        "components": {section: dict(sorted(items.items())) for section, items in sorted(components.items())},
    }
    return without_prose(reduced)  # type: ignore[return-value]


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        json.dump(reduce(json.load(f)), sys.stdout, indent=1, sort_keys=False)
        sys.stdout.write("\n")
