"""`monovl serve`: load the model, start the engine thread, run uvicorn until SIGTERM (or the engine dies)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time

import torch

from engine.async_engine import AsyncEngine
from engine.llm_engine import EngineConfig, LLMEngine
from model.forward_batch import KVCache
from server.drain import Drain
from server.metrics import PREFIXES, Metrics
from server.model_loading import LoadedCheckpoint, load_checkpoint
from server.preprocess_pool import PreprocessPool
from server.remote_images import RemoteImageFetcher
from server.state import ServerSettings, ServerState

DEFAULT_PORT = 8000
HEALTH_PATH = "/health"


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("MONOVL_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MONOVL_PORT", DEFAULT_PORT)))
    parser.add_argument("--api-key", default=os.environ.get("MONOVL_API_KEY"), help="or MONOVL_API_KEY")
    parser.add_argument("--served-model-name", help="the model id clients send (default: --model, or monovl-demo)")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None, help="tokens per step (chunked prefill)")
    parser.add_argument(
        "--long-prefill-token-threshold",
        type=int,
        help="most prefill tokens one request takes a step while others run; longer prompts are long "
        "(default and 0: --max-num-batched-tokens, so long prompts are those that need more than one step)",
    )
    parser.add_argument(
        "--max-num-partial-prefills",
        type=int,
        default=1,
        help="long prompts that prefill at once; the others wait, shorter ones go past them",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        help="context limit (default: the config's max_position_embeddings times its RoPE scaling factor, "
        "at most what the KV pool holds)",
    )
    parser.add_argument("--kv-cache-memory", type=float, help="GiB for the KV cache (default: sized to the load)")
    parser.add_argument(
        "--kv-cache-fraction",
        type=float,
        help="instead, this fraction of the memory free after loading (device memory on CUDA, RAM on CPU)",
    )
    parser.add_argument("--no-prefix-caching", action="store_true", help="turn off the prefix cache")
    parser.add_argument("--vision-cache-memory", type=float, default=0.25, help="GiB of cached image embeddings")
    parser.add_argument(
        "--attention-backend",
        default="auto",
        choices=["auto", "torch", "triton"],
        help="decode attention: the Triton paged kernel (auto: on CUDA) or the torch path",
    )
    parser.add_argument(
        "--fast-path",
        default="auto",
        help="optional kernels: auto (all this device runs), none, or some of norm,rotary,silu,experts",
    )
    parser.add_argument(
        "--enforce-eager", action="store_true", help="no CUDA graphs: run every decode step eagerly (as vLLM's flag)"
    )
    parser.add_argument("--max-image-tiles", type=int, default=12, help="tile cap per image")
    parser.add_argument("--max-images-per-request", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=256, help="requests in flight before 503")
    parser.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image URLs (public addresses only; size, time and redirect limits)",
    )
    parser.add_argument("--allowed-origins", default="", help="comma-separated CORS origins, or *")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        default=float(os.environ.get("MONOVL_GRACEFUL_TIMEOUT", 30.0)),
        help="seconds to finish work on SIGTERM; responses still open then end with an error event or a 503 "
        "(or MONOVL_GRACEFUL_TIMEOUT; keep it below the container's stop timeout)",
    )
    parser.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds a client has to send a request's headers (408)"
    )
    parser.add_argument(
        "--metrics-prefix",
        default="monovl",
        choices=PREFIXES,
        help="the metrics' namespace: vllm makes dashboards built for vLLM work unchanged",
    )
    parser.add_argument(
        "--stats-interval", type=float, default=10.0, help="seconds between the engine's stats lines while busy"
    )
    parser.add_argument("--disable-log-stats", action="store_true", help="no stats lines (as vLLM's flag)")
    parser.add_argument(
        "--json-any-whitespace",
        action="store_true",
        help="structured JSON outputs may put any whitespace between tokens (vLLM's default); without it, "
        "only the compact separators, so a model cannot pad an answer with whitespace until max_tokens",
    )
    parser.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds a request body may pause between chunks (408)"
    )


def free_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 4.0


def kv_cache_gib(args: argparse.Namespace, loaded: LoadedCheckpoint) -> float:
    """As asked; else room for max_num_seqs contexts of 8k tokens, at most 90% of free GPU memory or 2 GiB."""
    if args.kv_cache_memory:
        return args.kv_cache_memory
    if args.kv_cache_fraction:
        if not 0 < args.kv_cache_fraction < 1:
            raise ValueError("--kv-cache-fraction must be between 0 and 1")
        return args.kv_cache_fraction * free_memory_gib(loaded.model.device)
    llm = loaded.model.config.llm
    per_token = KVCache.bytes_per_block(llm, 16, loaded.model.dtype) / 16
    wanted = per_token * args.max_num_seqs * 8192 / 2**30
    if loaded.model.device.type == "cuda":
        return min(wanted, 0.9 * free_memory_gib(loaded.model.device))
    return min(wanted, 2.0)


def engine_config(args: argparse.Namespace, loaded: LoadedCheckpoint) -> EngineConfig:
    cuda = loaded.model.device.type == "cuda"
    return EngineConfig(
        kv_cache_memory=kv_cache_gib(args, loaded),
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens or (8192 if cuda else 512),
        max_model_len=args.max_model_len,
        long_prefill_token_threshold=args.long_prefill_token_threshold,
        max_num_partial_prefills=args.max_num_partial_prefills,
        attention_backend=args.attention_backend,
        cuda_graphs=not args.enforce_eager,
        fast_path=args.fast_path,
        enable_prefix_caching=not args.no_prefix_caching,
        vision_cache_memory=args.vision_cache_memory,
        json_any_whitespace=args.json_any_whitespace,
    )


def build_state(args: argparse.Namespace) -> ServerState:
    checkpoints: list[LoadedCheckpoint] = []

    def build_engine() -> LLMEngine:
        # on the engine thread: loading runs parallel torch ops too (engine/async_engine.py says why)
        loaded = load_checkpoint(args.model, args.dtype, args.device)
        checkpoints.append(loaded)
        return LLMEngine(loaded.model, loaded.tokens, engine_config(args, loaded))

    async_engine = AsyncEngine(build_engine)
    engine = async_engine.start()
    loaded = checkpoints[0]
    settings = ServerSettings(
        served_model_name=args.served_model_name or args.model or "monovl-demo",
        model_path=str(loaded.directory),
        api_key=args.api_key or None,
        max_images_per_request=args.max_images_per_request,
        max_image_tiles=args.max_image_tiles,
        max_queue=args.max_queue,
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        body_timeout=args.body_timeout,
        stats_interval=0.0 if args.disable_log_stats else args.stats_interval,
    )
    metrics = Metrics(settings.served_model_name, args.metrics_prefix)
    metrics.track_engine(
        lambda: len(engine.scheduler.running), lambda: len(engine.scheduler.waiting), lambda: engine.kv_cache_usage
    )
    pool = PreprocessPool(settings.preprocess_workers)
    remote = RemoteImageFetcher(settings.max_image_bytes) if args.allow_remote_images else None
    drain = Drain(args.graceful_timeout)
    return ServerState(settings, loaded.preprocessor, async_engine, pool, metrics, engine.max_model_len, remote, drain)


def bind(host: str, port: int) -> socket.socket:
    """The listening address, taken before the model loads; not listening yet, so connections are
    refused (not left waiting) until the server accepts them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def log_startup(state: ServerState, args: argparse.Namespace, load_seconds: float) -> None:
    engine = state.engine.engine
    runner = engine.runner
    pool_tokens = engine.block_pool.num_blocks * engine.config.block_size
    logging.getLogger("monovl").info(
        "serving %s on http://%s:%d: loaded in %.1f s (%s %s); KV pool %d blocks (%d tokens), context %d tokens, "
        "maximum concurrency at the full context %.2fx; decode attention %s, fast path %s, CUDA graphs %s",
        state.settings.served_model_name,
        args.host,
        args.port,
        load_seconds,
        engine.model.device,
        str(engine.model.dtype).removeprefix("torch."),
        engine.block_pool.num_blocks,
        pool_tokens,
        state.max_model_len,
        pool_tokens / state.max_model_len,
        "triton" if runner.decode_kernel is not None else "torch",
        runner.fast,
        f"for batch sizes up to {runner.graphs.sizes[-1]}" if runner.graphs is not None else "off",
    )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from server.app import create_app
    from server.connections import header_deadline_protocol
    from server.lifecycle import ENGINE_DIED_EXIT_STATUS, Server
    from server.memory import limit_arenas

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit_arenas()  # before the engine, preprocessing and OpenMP threads start (server/memory.py)
    sock = bind(args.host, args.port)  # a busy port fails now, not after minutes of loading
    started = time.perf_counter()
    state = build_state(args)
    log_startup(state, args, time.perf_counter() - started)
    # The loop stays "auto": uvloop (a dependency) when it imports, asyncio if not.
    config = uvicorn.Config(
        create_app(state),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        access_log=False,
        http=header_deadline_protocol(args.header_timeout),
    )
    server = Server(config, state.engine, state.drain)
    server.run(sockets=[sock])
    if server.engine_died:
        sys.exit(ENGINE_DIED_EXIT_STATUS)
