"""Stored responses, for `GET /v1/responses/{id}` and `previous_response_id`: each response's JSON
and its conversation (the chat messages a follow-up continues), bounded in entries and bytes
(`--responses-store-entries`, `--responses-store-memory`); the least recently used go first. A
response larger than the whole store is not kept."""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredResponse:
    response: dict  # the response as it was answered
    messages: list[dict]  # its conversation as chat messages: input (less its instructions) and output
    messages_size: int  # bytes of the messages as JSON
    size: int  # bytes of both as JSON


class ResponseStore:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: dict, messages: list[dict], earlier: StoredResponse | None = None) -> bool:
        """Keep `response` and its conversation, `earlier`'s messages then `messages`, under its id;
        False if it cannot be kept (larger than the store). Only what is new is measured, so a long
        chain of follow-ups costs each turn its own size, not its conversation's."""
        messages_size = len(json.dumps(messages)) + (earlier.messages_size if earlier else 0)
        size = len(json.dumps(response)) + messages_size
        if size > self.max_bytes or self.max_entries == 0:
            return False
        self.delete(response["id"])
        conversation = [*earlier.messages, *messages] if earlier else messages
        self._entries[response["id"]] = StoredResponse(response, conversation, messages_size, size)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.size
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._entries.get(response_id)
        if stored is not None:
            self._entries.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        stored = self._entries.pop(response_id, None)
        if stored is None:
            return False
        self.bytes -= stored.size
        return True
