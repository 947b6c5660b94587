"""A body pydantic refused, said as one OpenAI-style 400: the field named as the client wrote it, and
what is wrong with it in the API's terms rather than pydantic's (which union member it tried, what
its discriminator is called, its "Value error," prefix)."""

from __future__ import annotations

from monovl.server.errors import APIError
from monovl.server.protocol import MESSAGE_ROLES


def validation_error(errors: list) -> APIError:
    """The first bad field, named as deep as its errors go: where a union's members all fail (content
    as a string, or as a list of parts), the member that got furthest says what is wrong."""
    paths = [[str(p) for p in _wire_path(e.get("loc", ()))] for e in errors]
    deepest = max((k for k in range(len(errors)) if paths[k][: len(paths[0])] == paths[0]), key=lambda k: len(paths[k]))
    first, loc = errors[deepest], paths[deepest]
    if first.get("type") == "union_tag_invalid":  # the tag itself is wrong: name it
        discriminator = str(first["ctx"]["discriminator"]).strip("'")
        loc.append("type" if discriminator.endswith("()") else discriminator)  # a function reads `type`
    param = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or None
    message = _content_error(first, loc) or _message(first)
    return APIError(400, f"{param or 'body'}: {message}", param=param)


def _message(error: dict) -> str:
    kind, ctx = error.get("type"), error.get("ctx") or {}
    if kind == "union_tag_invalid":
        return f"{ctx['tag']!r} is not supported by this server; it takes {_listed(ctx['expected_tags'])}"
    if kind == "literal_error" and isinstance(error.get("input"), str):
        return f"{error['input']!r} is not supported by this server; it takes {ctx['expected']}"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx['pattern']}"
    if kind == "value_error":
        return str(ctx.get("error", error.get("msg", "invalid value")))
    if kind == "missing":
        return "this field is required"
    return error.get("msg", "invalid value")


def _listed(tags: str) -> str:
    """pydantic's "'a', 'b', 'c'" as "'a', 'b' or 'c'"."""
    head, _, last = tags.rpartition(", ")
    return f"{head} or {last}" if head else last


_PARTS_BY_ROLE = {"user": "'text' and 'image_url'", "assistant": "'text' and 'refusal'"}


def _content_error(error: dict, loc: list[str]) -> str | None:
    """A message's content said in the API's terms: a part type this model or this role does not take,
    or content that is neither a string nor a list of parts."""
    if "messages" not in loc or "content" not in loc:
        return None
    raw = [str(p) for p in error.get("loc", ())]
    role = next((p for p in raw if p in MESSAGE_ROLES), None)
    if loc[-1] == "content" and error.get("type") in ("string_type", "list_type"):
        return "content must be a string or a list of content parts"
    if loc[-1] != "type" or role is None:
        return None
    tag = error["ctx"]["tag"] if error.get("type") == "union_tag_invalid" else error.get("input")
    allowed = _PARTS_BY_ROLE.get(role, "'text'")
    where = "by this model" if role == "user" else f"in {'an' if role[0] in 'aeiou' else 'a'} {role} message"
    return f"content part type {tag!r} is not supported {where}; it takes {allowed} parts"


def _wire_path(loc: tuple) -> list:
    """The error's place in the body as the client wrote it: pydantic also names the union member
    it tried (a role's or content part's tag, `str`, `list[...]` or a model's class name), which the
    body does not have."""
    path, after_member = [], False
    for k, part in enumerate(loc):
        if part == "body" and k == 0:
            continue
        # A member's name is followed by a field or an index, never by another member's name.
        member = not after_member and isinstance(part, str)
        member = member and (
            part in _UNION_TAGS or "[" in part or part in ("str", "dict", "list") or part[:1].isupper()
        )
        after_member = member
        if not member:
            path.append(part)
    return path


_UNION_TAGS = frozenset(
    ["system", "developer", "user", "assistant", "tool", "text", "image_url", "refusal", "json_object", "json_schema"]
)
