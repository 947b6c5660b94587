"""Everything a running server holds: settings, the loaded model, the engine, the worker pools, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from monovl.engine.async_llm import AsyncLLM
from monovl.engine.settings import setting
from monovl.preprocessing.processor import Preprocessor
from monovl.server.connections import MAX_HEADER_BYTES, MAX_HEADER_COUNT
from monovl.server.drain import GRACEFUL_TIMEOUT_S, Drain
from monovl.server.logs import LOG_FORMATS, LOG_LEVELS
from monovl.server.metrics import PREFIXES, Metrics
from monovl.server.preprocess_pool import PreprocessPool
from monovl.server.remote_images import RemoteImageFetcher
from monovl.server.request_body import DEFAULT_MAX_VALUES
from monovl.server.response_store import ResponseStore

DEFAULT_PORT = 8000
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _origins(text: str) -> tuple[str, ...]:
    return tuple(origin.strip() for origin in text.split(",") if origin.strip())


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP side's settings; those with a flag are `monovl serve`'s options too (engine/settings.py)."""

    served_model_name: str
    model_path: str
    host: str = setting("0.0.0.0", "address to listen on; 0.0.0.0 is every interface", env="MONOVL_HOST")
    port: int = setting(
        DEFAULT_PORT, "port to listen on (0: any free one)", minimum=0, maximum=65535, env="MONOVL_PORT"
    )
    api_key: str | None = setting(
        None,
        "the key clients must send as a bearer token; without one anyone who reaches the port may call",
        env="MONOVL_API_KEY",
    )
    allowed_origins: tuple[str, ...] = setting(
        (), "comma-separated origins browsers may call from (CORS), or * (default: none)", parse=_origins
    )
    allow_remote_images: bool = setting(
        False, "fetch http(s) image URLs (public addresses only; size, time and redirect limits)"
    )
    graceful_timeout: float = setting(
        GRACEFUL_TIMEOUT_S,
        "seconds to finish work on SIGTERM; responses still open then end with an error event or a 503 (keep it "
        "below the container's stop timeout)",
        minimum=0,
        env="MONOVL_GRACEFUL_TIMEOUT",
    )
    drain_delay: float = setting(
        0.0,
        "seconds after SIGTERM during which /health answers 503 while new requests are still served, so that "
        "load balancers stop sending first (about their health check's interval times its failures to mark down; "
        "Kubernetes' preStop sleep does this before SIGTERM instead)",
        minimum=0,
        env="MONOVL_DRAIN_DELAY",
    )
    header_timeout: float = setting(10.0, "seconds a client has to send a request's headers (408)", positive=True)
    max_header_bytes: int = setting(
        MAX_HEADER_BYTES, "bytes of a request's line and headers together (431 beyond)", minimum=1
    )
    max_header_count: int = setting(MAX_HEADER_COUNT, "header fields one request may carry (431)", minimum=1)
    metrics_prefix: str = setting(
        "monovl", "the metrics' namespace: vllm makes dashboards built for vLLM work unchanged", choices=PREFIXES
    )
    log_level: str = setting("info", "the least level logged", choices=LOG_LEVELS)
    log_format: str = setting(
        "text", "text lines, or json: one object a line with time, level, request id and outcome", choices=LOG_FORMATS
    )
    max_images_per_request: int = setting(8, "images one request may carry", minimum=0)
    max_image_tiles: int | None = setting(
        None,
        "tile cap per image (default: the checkpoint's max_dynamic_patch; a request's max_num_tiles may ask for fewer)",
        minimum=1,
    )
    max_image_bytes: int = 20 * 2**20
    max_body_bytes: int = 64 * 2**20
    max_body_values: int = setting(
        DEFAULT_MAX_VALUES,
        "JSON values a request body may hold, counted by its commas (413 beyond; each costs event-loop time)",
        minimum=1,
    )
    body_timeout: float = setting(30.0, "seconds a request body may pause between chunks (408)", positive=True)
    max_queue: int = setting(256, "completions in flight (a request counts as its prompts x n) before 503", minimum=1)
    max_request_sequences: int = setting(
        128, "completions one request may ask for, prompts x n (400 beyond)", minimum=1
    )
    max_echo_logprobs: int = setting(
        500_000,
        "prompt logprobs an echo may return in all: prompt tokens x (logprobs + 1) x n over its prompts (400 beyond)",
        minimum=0,
    )
    preprocess_workers: int = setting(
        2, "threads that render and tokenize the prompts of requests without images (their own lane)", minimum=1
    )
    image_workers: int = setting(
        2, "threads that decode and tile images and tokenize the prompts of requests with images", minimum=1
    )
    remote_fetch_workers: int = setting(
        8,
        "threads that fetch http(s) images with --allow-remote-images (they wait on the network, not the CPU)",
        minimum=1,
    )
    responses_store_entries: int = setting(
        1000,
        "responses kept for GET /v1/responses/{id} and previous_response_id (least recently used dropped)",
        minimum=0,
    )
    responses_store_memory: float = setting(
        0.25, "GiB of kept responses and their conversations, images included", minimum=0
    )
    stats_interval: float = setting(10.0, "seconds between the engine's stats lines while busy", minimum=0)
    disable_log_stats: bool = setting(False, "no stats lines (vLLM's flag)")
    engine_process: bool = setting(
        True,
        "run the engine on a thread of the server's process, not in a process of its own (the GIL is then shared)",
        flag="--engine-thread",
        negate=True,
    )

    @property
    def stats_every(self) -> float:
        """Seconds between stats lines; 0: none."""
        return 0.0 if self.disable_log_stats else self.stats_interval

    @property
    def listens_beyond_loopback(self) -> bool:
        return self.host not in LOOPBACK and not self.host.startswith("127.")


@dataclass
class ServerState:
    settings: ServerSettings
    preprocessor: Preprocessor
    engine: AsyncLLM
    pool: PreprocessPool  # text-only requests' lane
    image_pool: PreprocessPool  # the lane of requests with images
    metrics: Metrics
    max_model_len: int
    remote_images: RemoteImageFetcher | None = None  # None: http(s) image URLs are refused
    fetch_pool: PreprocessPool | None = None  # the remote fetches' own threads
    drain: Drain = field(default_factory=Drain)
    responses: ResponseStore = field(default_factory=lambda: ResponseStore(0, 0))
    in_flight: int = 0

    @property
    def max_prompt_chars(self) -> int:
        """Text longer than this cannot fit in the context, however it tokenizes (no token stands for
        more characters than the tokenizer's longest), so it is refused before tokenizing."""
        return self.max_model_len * self.preprocessor.tokenizer.max_chars_per_token
