"""`monovl serve`: start the engine (its own process, or a thread), run uvicorn until SIGTERM (or the engine dies)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from functools import partial

import torch

from engine.async_engine import AsyncEngine
from engine.engine_process import EngineProcess
from engine.llm_engine import EngineConfig
from engine.output_processor import OutputProcessor
from engine.settings import add_arguments, from_arguments, in_range
from model.config import ModelConfig
from preprocessing.checkpoint import build_engine, checkpoint_directory
from preprocessing.cpu_priority import IMAGE_NICENESS
from preprocessing.processor import Preprocessor
from server.connections import MAX_HEADER_BYTES, MAX_HEADER_COUNT
from server.drain import GRACEFUL_TIMEOUT_S, Drain
from server.metrics import PREFIXES, Metrics
from server.preprocess_pool import PreprocessPool
from server.remote_images import RemoteImageFetcher
from server.state import ServerSettings, ServerState

DEFAULT_PORT = 8000
HEALTH_PATH = "/health"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("MONOVL_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("MONOVL_PORT", DEFAULT_PORT)))
    parser.add_argument("--api-key", default=os.environ.get("MONOVL_API_KEY"), help="or MONOVL_API_KEY")
    parser.add_argument("--served-model-name", help="the model id clients send (default: --model, or monovl-demo)")
    add_arguments(parser, EngineConfig)
    add_arguments(parser, ServerSettings)
    parser.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image URLs (public addresses only; size, time and redirect limits)",
    )
    parser.add_argument("--allowed-origins", default="", help="comma-separated CORS origins, or *")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--graceful-timeout",
        type=in_range(float, minimum=0),
        default=float(os.environ.get("MONOVL_GRACEFUL_TIMEOUT", GRACEFUL_TIMEOUT_S)),
        help="seconds to finish work on SIGTERM; responses still open then end with an error event or a 503 "
        "(or MONOVL_GRACEFUL_TIMEOUT; keep it below the container's stop timeout)",
    )
    parser.add_argument(
        "--header-timeout",
        type=in_range(float, positive=True),
        default=10.0,
        help="seconds a client has to send a request's headers (408)",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=in_range(int, minimum=1),
        default=MAX_HEADER_BYTES,
        help="bytes of a request's line and headers together (431 beyond)",
    )
    parser.add_argument(
        "--max-header-count",
        type=in_range(int, minimum=1),
        default=MAX_HEADER_COUNT,
        help="header fields one request may carry (431)",
    )
    parser.add_argument(
        "--metrics-prefix",
        default="monovl",
        choices=PREFIXES,
        help="the metrics' namespace: vllm makes dashboards built for vLLM work unchanged",
    )
    parser.add_argument("--disable-log-stats", action="store_true", help="no stats lines (as vLLM's flag)")


def build_state(args: argparse.Namespace) -> ServerState:
    directory = checkpoint_directory(args.model)
    # Built where it runs: in its process, or on the engine thread (engine/async_engine.py says why).
    config = from_arguments(EngineConfig, args)
    build = partial(build_engine, directory, args.dtype, args.device, args.fast_path, config)
    preprocessor = Preprocessor(directory, ModelConfig.load(directory))
    if args.engine_process:  # the text is made here, off the core's step loop
        text = OutputProcessor(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids))
        engine = EngineProcess(partial(build, detokenize=False), text, args.log_level, LOG_FORMAT)
        torch.set_num_threads(1)  # this process's torch work is small; the cores' parallel work is the engine's
    else:
        engine = AsyncEngine(build)
    info = engine.start()
    settings = from_arguments(
        ServerSettings,
        args,
        served_model_name=args.served_model_name or args.model or "monovl-demo",
        model_path=str(directory),
        api_key=args.api_key or None,
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        stats_interval=0.0 if args.disable_log_stats else args.stats_interval,
    )
    metrics = Metrics(settings.served_model_name, args.metrics_prefix)
    metrics.track_engine(
        lambda: engine.stats().running, lambda: engine.stats().waiting, lambda: engine.stats().kv_cache_usage
    )
    pool = PreprocessPool(settings.preprocess_workers)
    image_pool = PreprocessPool(settings.image_workers, "monovl-image", IMAGE_NICENESS)
    remote = RemoteImageFetcher(settings.max_image_bytes) if args.allow_remote_images else None
    fetch_pool = PreprocessPool(settings.remote_fetch_workers, "monovl-fetch") if remote is not None else None
    drain = Drain(args.graceful_timeout)
    return ServerState(
        settings, preprocessor, engine, pool, image_pool, metrics, info.limits.max_model_len, remote, fetch_pool, drain
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, taken before the model loads. Listening at once: with SO_REUSEADDR (a
    restart must not wait out TIME_WAIT) a bound socket that is not listening yet does not stop
    another from binding the same port. Connections made while the model loads wait in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's backlog
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def log_startup(state: ServerState, args: argparse.Namespace, load_seconds: float) -> None:
    info = state.engine.info
    pool_tokens = info.num_blocks * info.block_size
    logging.getLogger("monovl").info(
        "serving %s on http://%s:%d: loaded in %.1f s (%s %s); KV pool %d blocks (%d tokens), context %d tokens, "
        "maximum concurrency at the full context %.2fx; decode attention %s, fast path %s, CUDA graphs %s; "
        "the engine runs in %s",
        state.settings.served_model_name,
        args.host,
        args.port,
        load_seconds,
        info.device,
        info.dtype,
        info.num_blocks,
        pool_tokens,
        state.max_model_len,
        pool_tokens / state.max_model_len,
        info.decode_attention,
        info.fast_path,
        f"for batch sizes up to {info.max_graph_batch}" if info.max_graph_batch is not None else "off",
        "a process of its own" if args.engine_process else "a thread of the server's process",
    )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from server.app import create_app
    from server.connections import header_deadline_protocol
    from server.lifecycle import ENGINE_DIED_EXIT_STATUS, Server
    from server.memory import limit_arenas

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
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
        http=header_deadline_protocol(args.header_timeout, args.max_header_bytes, args.max_header_count),
    )
    server = Server(config, state.engine, state.drain)
    server.run(sockets=[sock])
    if server.engine_died:
        sys.exit(ENGINE_DIED_EXIT_STATUS)
