"""Visual embeddings of recent images, keyed by content hash, bounded in bytes (least recent out)."""

from __future__ import annotations

from collections import OrderedDict

import torch


class VisionCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get(self, content_hash: str) -> torch.Tensor | None:
        embeds = self.entries.get(content_hash)
        if embeds is not None:
            self.entries.move_to_end(content_hash)
        return embeds

    def put(self, content_hash: str, embeds: torch.Tensor) -> None:
        size = embeds.numel() * embeds.element_size()
        if size > self.max_bytes or content_hash in self.entries:
            return
        while self.bytes + size > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= evicted.numel() * evicted.element_size()
        self.entries[content_hash] = embeds
        self.bytes += size
