"""The serve lifecycle: listen, load, warm up, serve, drain, exit.

    listen (health NOT_SERVING) -> load the model -> warm it up end to end -> SERVING,
    READY=1 -> ... SIGTERM -> NOT_SERVING, STOPPING=1, refuse new calls -> the accepted
    ones finish (up to drain_timeout_s); past it, the ones left are answered UNAVAILABLE
    / 503 -> close the listeners -> stop the worker -> exit 0.

SIGHUP reloads the token, the TLS files and the log level (server/reload.py); no call is
touched. A worker still inside a batch when the process leaves (a hung or very slow batch
past the drain) is not waited for: the process exits without the interpreter's teardown,
which would free the runtime under the running batch (onnxruntime then aborts).

`python -m edgerank.server.daemon --help` runs it without the CLI; `edgerank serve` calls run().
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from edgerank.backends.base import Backend
from edgerank.engine.cascade import Cascade
from edgerank.engine.service import PLAIN, Service, Shape
from edgerank.errors import EdgerankError
from edgerank.server import grpc as grpc_server
from edgerank.server import systemd
from edgerank.server.reload import Reloader
from edgerank.server.settings import Settings, click_options, load
from edgerank.server.transport import FLUSH_S, TlsPair, Token

if TYPE_CHECKING:
    from edgerank.server.http_listen import HttpListening

log = logging.getLogger("edgerank.server.daemon")

#: after the drain deadline, seconds the inference worker gets to finish its batch
CLOSE_S = 0.4
#: so SIGTERM -> exit takes at most drain_timeout_s + FLUSH_S + CLOSE_S (< drain + 1 s);
#: FLUSH_S (transport.py) is both transports' grace for answers being written
#: threads that may be inside a runtime (or a tokenizer) when the process leaves
WORKER_THREADS = ("edgerank-",)


class Opened(NamedTuple):
    """A BackendFactory's answer; a plain (backend, aliases, hardware) tuple, as test doubles
    return, leaves the shape at the default."""

    backend: Backend
    #: names the model may be asked for by
    aliases: list[str]
    #: the hardware summary Info reports
    hardware: dict[str, str]
    #: the planner's batch shape for the model, which settings left at 0 (auto) take
    shape: Shape = PLAIN
    #: the entry's FP32 rescoring of near-ties (an INT8 install's recipe); None = none
    cascade: Cascade | None = None


#: settings -> (backend, aliases, hardware summary[, batch shape]): an Opened, or a tuple
BackendFactory = Callable[[Settings], tuple]


def load_backend(settings: Settings) -> Opened:
    """Open the configured model the way `edgerank score` does (startup/), with the
    batch shape the planner gives it."""
    from pathlib import Path

    from edgerank.startup import load as loader
    from edgerank.store.layout import StoreLayout

    store = StoreLayout(Path(settings.home) if settings.home else None)
    loaded = loader.load(
        settings.model or None,
        backend=None if settings.backend == "auto" else settings.backend,
        threads=settings.threads or None,
        store=store,
        allow_remote_code=settings.allow_remote_code,
        request_shape=settings.request_shape or None,
    )
    if loaded.note:
        log.warning("%s", loaded.note)
    summary = {k: _text(v) for k, v in loaded.hardware.to_dict().items()}
    shape = (loaded.token_budget, loaded.max_pairs)
    return Opened(loaded.backend, [settings.model], summary, shape, loaded.cascade)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _in_thread(fn: Callable[[], Any]) -> asyncio.Future:
    """Run a blocking call on a daemon thread, so SIGTERM during a long load exits at once."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=target, name="edgerank-load", daemon=True).start()
    return future


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def load_reference(settings: Settings, served: str) -> Backend:
    """The FP32 reference of the served INT8 entry (fidelity_sample > 0)."""
    from pathlib import Path

    from edgerank.backends.registry import open_reference
    from edgerank.startup.load import reference_dir
    from edgerank.store.layout import StoreLayout

    store = StoreLayout(Path(settings.home) if settings.home else None)
    return open_reference(reference_dir(settings.model, served, store), threads=1)


async def serve(
    settings: Settings,
    factory: BackendFactory = load_backend,
    fresh: Callable[[], Settings] | None = None,
) -> int:
    """The whole lifecycle inside one event loop; returns the exit code. `fresh` reads the
    settings again for a SIGHUP reload (None: the same settings, their files read again)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # until the listeners are up there is nothing to reload, but HUP must not kill either
    loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP while starting: nothing reloaded")

    service = Service(settings.engine())
    try:
        token = Token(settings.bearer_token())
        tls = TlsPair(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        listening = await grpc_server.start(service, settings, token, tls)
        http = await _start_http(service, settings, listening, token, tls)
    except EdgerankError as exc:  # a port or socket in use, TLS files that do not match...
        log.error("%s", exc)
        systemd.status(f"failed: {exc}")
        return 1
    reloader = Reloader(settings, token, tls, fresh)
    ready_line: list[str] = []  # the READY=1 status, once serving
    loop.add_signal_handler(signal.SIGHUP, _on_hup, reloader, service, ready_line)
    addresses = listening.addresses + (http.addresses if http else [])
    log.info("listening on %s (health NOT_SERVING while loading)", ", ".join(addresses))
    systemd.status(f"loading {settings.model or 'the default model'}")
    stopper = asyncio.ensure_future(stop.wait())
    watchdog: asyncio.Task | None = None
    #: loop.time() by which the process is on its way out (drain_timeout_s after SIGTERM)
    deadline: float | None = None
    try:
        loading = _in_thread(lambda: factory(settings))
        await asyncio.wait({loading, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():
            log.info("stopped while loading")
            systemd.stopping("stopped while loading")
            return 0
        opened = Opened(*loading.result())
        service.hardware = opened.hardware
        await service.start(opened.backend, opened.aliases, opened.shape, opened.cascade)
        info = service.info
        if settings.fidelity_sample > 0:
            reference = (  # the cascade's FP32 graph is the same file: loaded once
                opened.cascade.reference
                if opened.cascade is not None
                else await _in_thread(lambda: load_reference(settings, info.model))
            )
            service.watch_fidelity(reference, settings.fidelity_sample)
            log.info(
                "fidelity watch on: %g of requests vs the FP32 reference", settings.fidelity_sample
            )
        await listening.set_serving(True)
        tokens, pairs = service.batch_shape
        line = (
            f"serving {info.model} ({info.backend} {info.precision}, {info.threads} threads, "
            f"batches of {tokens} tokens{f' x {pairs} pairs' if pairs else ''})"
        )
        if opened.cascade is not None:
            line += f", FP32 rescoring of near-ties within {opened.cascade.margin:.3g}"
        log.info("%s on %s", line, ", ".join(addresses))
        if note := (info.details or {}).get("fidelity_note"):
            log.warning("%s", note)
        systemd.ready(line)
        ready_line.append(line)
        interval = systemd.watchdog_interval()
        if interval is not None:
            watchdog = asyncio.create_task(
                systemd.watchdog_loop(lambda: service.healthy(stall_s=interval), interval)
            )
        await stopper
        deadline = loop.time() + settings.drain_timeout_s
        await _drain(service, listening, http, deadline, settings.drain_quiet_s)
        return 0
    except EdgerankError as exc:
        log.error("%s", exc)
        systemd.status(f"failed: {exc}")
        return 1
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        stopper.cancel()
        if watchdog is not None:
            watchdog.cancel()
        await _close_listeners(listening, http, 0.0)
        await service.close_cache()
        if service.backend is not None:
            left = settings.drain_timeout_s if deadline is None else deadline - loop.time()
            await asyncio.to_thread(service.close, max(0.0, left) + CLOSE_S)
        listening.release_socket()
        log.info("stopped after answering %s", _answered(service))


def _on_hup(reloader: Reloader, service: Service, ready_line: list[str]) -> None:
    """SIGHUP: reload the token, the TLS files and the log level; one line says what."""
    if service.state in ("draining", "stopped"):
        log.info("SIGHUP while stopping: nothing reloaded")
        return
    serving = bool(ready_line)  # READY=1 went out: tell systemd a reload is under way
    if serving:
        systemd.reloading()
    try:
        log.info("SIGHUP: %s", reloader.reload())
    except EdgerankError as exc:
        log.warning("SIGHUP: reload refused, nothing changed: %s", exc)
    if serving:
        systemd.ready(ready_line[0])


def _answered(service: Service) -> str:
    """The scoring requests each face answered, by status, as the clients saw them (not the
    warm-up, nor Info, health or metrics calls)."""
    counts: dict[tuple[str, str], int] = {}
    for family in service.metrics.requests.collect():
        for sample in family.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and not labels["endpoint"].endswith(".Info"):
                key = (labels["transport"], labels["code"])
                counts[key] = counts.get(key, 0) + int(sample.value)
    total = sum(counts.values())
    detail = ", ".join(f"{t} {code} {n}" for (t, code), n in sorted(counts.items()) if n)
    return f"{total} requests" + (f" ({detail})" if detail else "")


async def _start_http(
    service: Service,
    settings: Settings,
    listening: grpc_server.Listening,
    token: Token,
    tls: TlsPair | None,
) -> HttpListening | None:
    """The HTTP face on this loop, when configured (aiohttp is imported only then)."""
    if not (settings.http or settings.http_socket):
        return None
    from edgerank.server import http_listen

    try:
        return await http_listen.start(service, settings, token, tls)
    except BaseException:
        await listening.stop(0)
        listening.release_socket()
        raise


async def _drain(
    service: Service,
    listening: grpc_server.Listening,
    http: HttpListening | None,
    deadline: float,
    quiet_s: float,
) -> None:
    """Finish the accepted calls by `deadline`; past it, answer the ones left UNAVAILABLE /
    503 (retryable); then let the answers go out (FLUSH_S) and close the listeners."""
    loop = asyncio.get_running_loop()
    service.drain()
    await listening.health.enter_graceful_shutdown()
    systemd.stopping(f"draining {service.calls} in-flight calls")
    log.info("SIGTERM: draining %d in-flight calls", service.calls)
    began = loop.time()
    if await service.wait_idle(max(0.0, deadline - loop.time())):
        # how close the drain came to its deadline, for whoever sizes drain_timeout_s
        log.info(
            "SIGTERM: every accepted call answered in %.2f s, %.2f s before the drain deadline",
            loop.time() - began,
            deadline - loop.time(),
        )
    else:
        running = service.calls
        service.abandon()
        log.warning(
            "drain timeout: %d calls still running are answered UNAVAILABLE / 503 (retryable)",
            running,
        )
    # keep refusing late calls until they stop coming: balancing clients retry elsewhere
    await service.wait_quiet(quiet_s, max(0.0, deadline - loop.time()))
    flushed = loop.time() + FLUSH_S  # the cut-off answers and the listeners share FLUSH_S
    await service.wait_idle(FLUSH_S)
    await _close_listeners(listening, http, max(0.0, flushed - loop.time()))


async def _close_listeners(
    listening: grpc_server.Listening, http: HttpListening | None, grace: float
) -> None:
    """Both transports at once, granting answers being written `grace` (HTTP: FLUSH_S)."""
    stops = [listening.stop(grace)]
    if http is not None:
        stops.append(http.stop())
    await asyncio.gather(*stops)


def run(
    settings: Settings,
    factory: BackendFactory = load_backend,
    fresh: Callable[[], Settings] | None = None,
) -> int:
    """Blocking entry for `edgerank serve`: serve until SIGTERM/SIGINT, return the exit code.

    When a worker thread is still running (a batch past the drain, a load cut short), the
    process leaves here, with its code, without the interpreter's teardown: that would
    free the runtime's objects under the running call and abort the process."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    code = asyncio.run(serve(settings, factory, fresh))
    busy = [t.name for t in threading.enumerate() if t.name.startswith(WORKER_THREADS)]
    if busy:
        log.debug("leaving without waiting for %s", ", ".join(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main() -> None:
    import click

    @click.command(help="Run the edgerank daemon (the same options as `edgerank serve`).")
    @click_options
    def main(**flags: Any) -> None:
        try:
            settings = load(flags)
        except EdgerankError as exc:
            raise click.ClickException(str(exc)) from None
        sys.exit(run(settings, fresh=lambda: load(flags)))  # logs its own errors, returns 1

    main()


if __name__ == "__main__":
    _main()
