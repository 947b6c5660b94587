"""KV cache blocks: allocation with reference counts, and prefix caching by content hash.

A full block's hash chains its parent's hash with its token ids and, for image tokens, the
image's content hash and the offsets of the rows it holds, so equal prompts with different
pictures never share. A freed block keeps its hash and stays findable until it is reused
(least recently freed first).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from monovl.engine.request import Request


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def blocks_needed(self, request: Request, num_new_tokens: int) -> int:
        total = request.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(request.block_table))

    def allocate(self, request: Request, num_new_tokens: int) -> bool:
        """Grow the block table to hold the new tokens; False (and no change) if the pool is short."""
        needed = self.blocks_needed(request, num_new_tokens)
        if needed > self.num_free:
            return False
        for _ in range(needed):
            block, _ = self.free.popitem(last=False)
            if self.block_hash[block] is not None:
                del self.cached[self.block_hash[block]]
                self.block_hash[block] = None
            self.ref_counts[block] = 1
            request.block_table.append(block)
        return True

    def free_request(self, request: Request, keep_cached: bool = True) -> None:
        """Release the request's blocks; `keep_cached=False` forgets their contents (a failed forward)."""
        # Later blocks go to the front of the eviction order: a shared prefix outlives its tails.
        for block in reversed(request.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
                if not keep_cached and self.block_hash[block] is not None:
                    del self.cached[self.block_hash[block]]
                    self.block_hash[block] = None
        request.block_table = []
        request.block_hashes = []

    def use_cached_prefix(self, request: Request, rope_seed: bytes) -> None:
        """Point a new request's table at cached blocks of its prompt; at least one token stays to compute."""
        if not self.enable_prefix_caching:
            return
        limit = (request.num_tokens - 1) // self.block_size
        parent = rope_seed
        for k in range(limit):
            digest = self._block_digest(request, k, parent)
            block = self.cached.get(digest)
            if block is None:
                break
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1
            request.block_table.append(block)
            request.block_hashes.append(digest)
            parent = digest
        request.num_computed_tokens = len(request.block_table) * self.block_size
        request.num_cached_tokens = request.num_computed_tokens

    def commit_full_blocks(self, request: Request, num_tokens: int, rope_seed: bytes) -> None:
        """Register the hashes of blocks that the first `num_tokens` tokens fill completely."""
        if not self.enable_prefix_caching:
            return
        parent = request.block_hashes[-1] if request.block_hashes else rope_seed
        for k in range(len(request.block_hashes), num_tokens // self.block_size):
            digest = self._block_digest(request, k, parent)
            request.block_hashes.append(digest)
            block = request.block_table[k]
            if digest not in self.cached and self.block_hash[block] is None:
                self.cached[digest] = block
                self.block_hash[block] = digest
            parent = digest

    def next_block_digest(self, request: Request, rope_seed: bytes) -> bytes | None:
        """The hash the request's first block not yet in its table will have, if its tokens fill it;
        two requests with equal ones are about to compute the same K/V."""
        k = len(request.block_table)
        if not self.enable_prefix_caching or (k + 1) * self.block_size > request.num_prompt_tokens:
            return None
        if len(request.block_hashes) < k:  # a block still in its first chunk: its hash is not known yet
            return None
        parent = request.block_hashes[k - 1] if k else rope_seed
        return self._block_digest(request, k, parent)

    def _block_digest(self, request: Request, k: int, parent: bytes) -> bytes:
        start, end = k * self.block_size, (k + 1) * self.block_size
        h = hashlib.sha256(parent)
        h.update(b"".join(t.to_bytes(4, "little") for t in request.token_ids[start:end]))
        for image, (lo, hi) in zip(request.prompt.images, request.prompt.image_spans, strict=True):
            if lo < end and hi > start:
                h.update(f"|{image.content_hash}:{max(lo, start) - lo}:{min(hi, end) - lo}".encode())
        return h.digest()
