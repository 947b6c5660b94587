"""Everything a running server holds: settings, the loaded model, the engine, the worker pools, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.async_engine import AsyncEngine
from engine.engine_process import EngineProcess
from engine.settings import setting
from preprocessing.processor import Preprocessor
from server.drain import Drain
from server.metrics import Metrics
from server.preprocess_pool import PreprocessPool
from server.remote_images import RemoteImageFetcher
from server.request_body import DEFAULT_MAX_VALUES


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP side's settings; those with a flag are `monovl serve`'s options too (engine/settings.py)."""

    served_model_name: str
    model_path: str
    api_key: str | None = None
    max_images_per_request: int = setting(8, "images one request may carry", minimum=0)
    max_image_tiles: int = setting(12, "tile cap per image (a request's max_num_tiles may ask for fewer)", minimum=1)
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
    allowed_origins: tuple[str, ...] = ()
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
    stats_interval: float = setting(10.0, "seconds between the engine's stats lines while busy", minimum=0)
    engine_process: bool = setting(
        True,
        "run the engine on a thread of the server's process, not in a process of its own (the GIL is then shared)",
        flag="--engine-thread",
        negate=True,
    )


@dataclass
class ServerState:
    settings: ServerSettings
    preprocessor: Preprocessor
    engine: AsyncEngine | EngineProcess
    pool: PreprocessPool  # text-only requests' lane
    image_pool: PreprocessPool  # the lane of requests with images
    metrics: Metrics
    max_model_len: int
    remote_images: RemoteImageFetcher | None = None  # None: http(s) image URLs are refused
    fetch_pool: PreprocessPool | None = None  # the remote fetches' own threads
    drain: Drain = field(default_factory=Drain)
    in_flight: int = 0

    @property
    def max_prompt_chars(self) -> int:
        """Text longer than this cannot fit in the context, however it tokenizes (no token stands for
        more characters than the tokenizer's longest), so it is refused before tokenizing."""
        return self.max_model_len * self.preprocessor.tokenizer.max_chars_per_token
