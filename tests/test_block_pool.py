"""The KV block pool: allocation, freeing, and prefix caching by chained content hash."""

from monovl.engine.block_pool import BlockPool
from monovl.engine.inputs import PromptInputs
from monovl.engine.request import Request
from monovl.engine.sampling_params import SamplingParams

SEED = b"rope"


def request(tokens: list[int], name: str = "r") -> Request:
    return Request(name, 0, PromptInputs("", tokens, [], []), SamplingParams(), frozenset())


def computed(pool: BlockPool, tokens: list[int], name: str) -> list[bytes]:
    """Compute a request's prompt, register its full blocks and finish it; their hashes."""
    r = request(tokens, name)
    assert pool.allocate(r, len(tokens))
    pool.commit_full_blocks(r, len(tokens), SEED)
    hashes = list(r.block_hashes)
    pool.free_request(r)
    return hashes


def test_a_block_hash_covers_every_block_before_it():
    # Equal second blocks after different first blocks hold different K/V: they must not be shared.
    pool = BlockPool(16, block_size=4)
    a = computed(pool, [1, 2, 3, 4, 9, 9, 9, 9], "a")
    b = computed(pool, [5, 6, 7, 8, 9, 9, 9, 9], "b")
    assert len(set(a + b)) == 4
    later = request([5, 6, 7, 8, 9, 9, 9, 9, 1], "later")
    pool.use_cached_prefix(later, SEED)
    assert later.num_computed_tokens == 8 and later.block_hashes == b
    other = request([0, 6, 7, 8, 9, 9, 9, 9, 1], "other")  # its first block differs: nothing is shared
    pool.use_cached_prefix(other, SEED)
    assert other.num_computed_tokens == 0 and other.block_table == []


def test_a_block_hash_depends_on_the_rope_seed():
    pool = BlockPool(16, block_size=4)
    computed(pool, [1, 2, 3, 4, 5], "a")
    again = request([1, 2, 3, 4, 5, 6])
    pool.use_cached_prefix(again, b"another length")
    assert again.num_computed_tokens == 0


def test_allocation_is_all_or_nothing_and_freeing_returns_every_block():
    pool = BlockPool(4, block_size=4)
    r = request(list(range(12)))
    assert pool.allocate(r, 12) and len(r.block_table) == 3 and pool.num_free == 1
    big = request(list(range(9)))
    assert not pool.allocate(big, 9) and big.block_table == [] and pool.num_free == 1
    pool.free_request(r)
    assert pool.num_free == 4 and r.block_table == []
