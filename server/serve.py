"""`monovl serve`: start the engine (its own process, or a thread), run uvicorn until SIGTERM (or the engine dies)."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from functools import partial
from pathlib import Path

import torch

from monovl.checkpoint import build_engine, checkpoint_directory, parse_device
from monovl.engine.async_llm import AsyncLLM
from monovl.engine.core_client import CoreProcess, CoreThread
from monovl.engine.llm_engine import EngineConfig
from monovl.engine.output_processor import OutputProcessor
from monovl.engine.settings import add_arguments, from_arguments
from monovl.model.config import ModelConfig
from monovl.preprocessing.cpu_priority import IMAGE_NICENESS
from monovl.preprocessing.processor import Preprocessor
from monovl.server.drain import Drain
from monovl.server.logs import configure_logging
from monovl.server.metrics import Metrics
from monovl.server.preprocess_pool import PreprocessPool
from monovl.server.remote_images import RemoteImageFetcher
from monovl.server.response_store import ResponseStore
from monovl.server.state import ServerSettings, ServerState

HEALTH_PATH = "/health"
log = logging.getLogger("monovl")


class SettingsError(ValueError):
    """Settings that cannot serve together; `monovl serve` exits 2 with the message."""


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--served-model-name", help="the model id clients send (default: --model, or monovl-demo)")
    add_arguments(parser, EngineConfig)
    add_arguments(parser, ServerSettings)


def check_settings(args: argparse.Namespace) -> list[str]:
    """What contradicts itself among the settings, before anything loads (each said naming the flags)."""
    device = parse_device(args.device)
    return from_arguments(EngineConfig, args).conflicts(device)


def check_image_room(settings: ServerSettings, config: ModelConfig, max_model_len: int) -> None:
    """A server that takes images must hold one at its tile cap in its context, or every large image
    would be refused as too long."""
    if settings.max_images_per_request == 0:
        return
    tiles = settings.max_image_tiles or config.max_dynamic_patch
    tiles = min(tiles, config.max_dynamic_patch) if config.dynamic_image_size else 1
    thumbnail = 1 if config.use_thumbnail and tiles > 1 else 0
    needed = (tiles + thumbnail) * config.num_image_token
    if needed >= max_model_len:
        raise SettingsError(
            f"the context of {max_model_len} tokens (--max-model-len, or the KV pool) cannot hold one image at "
            f"{tiles} tiles ({needed} tokens): raise --max-model-len or the KV cache, lower --max-image-tiles, or "
            "serve text only with --max-images-per-request 0"
        )


def server_settings(args: argparse.Namespace, directory: Path) -> ServerSettings:
    return from_arguments(
        ServerSettings,
        args,
        served_model_name=args.served_model_name or args.model or "monovl-demo",
        model_path=str(directory),
        api_key=args.api_key or None,
    )


def build_state(args: argparse.Namespace) -> ServerState:
    directory = checkpoint_directory(args.model)
    settings = server_settings(args, directory)
    # Built where it runs: in its process, or on the engine thread (engine/core_client.py says why).
    config = from_arguments(EngineConfig, args)
    build = partial(build_engine, directory, args.dtype, args.device, args.fast_path, config)
    model_config = ModelConfig.load(directory)
    if config.max_model_len is not None:  # known before the weights load; otherwise once the pool is sized
        check_image_room(settings, model_config, config.max_model_len)
    preprocessor = Preprocessor(directory, model_config)
    # The engine sends token ids; their text is made here, off the core's step loop.
    build = partial(build, detokenize=False)
    if settings.engine_process:
        core = CoreProcess(build, partial(configure_logging, settings.log_level, settings.log_format))
        torch.set_num_threads(1)  # this process's torch work is small; the cores' parallel work is the engine's
    else:
        core = CoreThread(build)
    engine = AsyncLLM.start(core, OutputProcessor(preprocessor.tokenizer, tuple(preprocessor.stop_token_ids)))
    info = engine.info
    try:
        check_image_room(settings, model_config, info.limits.max_model_len)
    except SettingsError:
        engine.shutdown()
        raise
    metrics = Metrics(settings.served_model_name, settings.metrics_prefix)
    metrics.track_engine(engine.stats, info, config.enable_prefix_caching)
    pool = PreprocessPool(settings.preprocess_workers)
    image_pool = PreprocessPool(settings.image_workers, "monovl-image", IMAGE_NICENESS)
    remote = RemoteImageFetcher(settings.max_image_bytes) if settings.allow_remote_images else None
    fetch_pool = PreprocessPool(settings.remote_fetch_workers, "monovl-fetch") if remote is not None else None
    drain = Drain(settings.graceful_timeout)
    store = ResponseStore(settings.responses_store_entries, int(settings.responses_store_memory * 2**30))
    return ServerState(
        settings,
        preprocessor,
        engine,
        pool,
        image_pool,
        metrics,
        info.limits.max_model_len,
        remote,
        fetch_pool,
        drain,
        store,
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


def log_startup(state: ServerState, load_seconds: float) -> None:
    info = state.engine.info
    settings = state.settings
    pool_tokens = info.num_blocks * info.block_size
    log.info(
        "serving %s on http://%s:%d: loaded in %.1f s (%s %s); KV pool %d blocks (%d tokens), context %d tokens, "
        "maximum concurrency at the full context %.2fx; decode attention %s, fast path %s, CUDA graphs %s; "
        "the engine runs in %s",
        settings.served_model_name,
        settings.host,
        settings.port,
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
        "a process of its own" if settings.engine_process else "a thread of the server's process",
    )
    if settings.listens_beyond_loopback and not settings.api_key:
        log.warning(
            "listening on %s with no API key: anyone who can reach this address can use the model (--api-key or "
            "MONOVL_API_KEY sets one; --host 127.0.0.1 keeps it to this machine)",
            settings.host,
        )


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from monovl.server.app import create_app
    from monovl.server.connections import header_deadline_protocol
    from monovl.server.lifecycle import ENGINE_DIED_EXIT_STATUS, Server
    from monovl.server.memory import limit_arenas

    configure_logging(args.log_level, args.log_format)
    limit_arenas()  # before the engine, preprocessing and OpenMP threads start (server/memory.py)
    sock = bind(args.host, args.port)  # a busy port fails now, not after minutes of loading
    started = time.perf_counter()
    state = build_state(args)
    log_startup(state, time.perf_counter() - started)
    settings = state.settings
    # The loop stays "auto": uvloop (a dependency) when it imports, asyncio if not.
    config = uvicorn.Config(
        create_app(state),
        host=settings.host,
        port=settings.port,
        log_config=None,  # uvicorn's lines go through this process's handler (server/logs.py)
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.graceful_timeout,
        access_log=False,
        http=header_deadline_protocol(settings.header_timeout, settings.max_header_bytes, settings.max_header_count),
    )
    server = Server(config, state)
    server.run(sockets=[sock])
    if server.engine_died:
        sys.exit(ENGINE_DIED_EXIT_STATUS)
