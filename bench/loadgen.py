"""A lean HTTP/1.1 load generator on raw asyncio streams, light enough to share two cores with the server, and a
gRPC twin of its closed loop on grpc.aio.

Requests are built once as bytes (headers and a multipart body for /v1, or an Open Inference Protocol JSON header
and binary tensors for /v2) and written as they are; responses are parsed just enough to get the status,
Retry-After and the body length. Connections are kept alive and reopened when the server closes one (it does
after refusing an upload it did not read). gRPC requests (`ModelInferRequest`, from the server's own generated
stubs) are built once too; each client has its own channel, hence its own connection, as each HTTP client has.

Two load shapes:
- `closed_loop`: N clients, each sending its next request when the previous answer arrives. A client refused with
  503 waits what Retry-After says (capped at 1 s) before trying again, as a polite client does.
- `open_loop`: requests arrive as a Poisson process at a fixed rate, whatever the server does (MLPerf's Server
  scenario); latency counts from the scheduled arrival, so a late client or a full connection pool shows up in it.

Each run reports its own CPU use (`resource.getrusage` of this process, gRPC's own threads included), so a reader
can see the client did not starve the server. Every time is from the monotonic clock.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import resource
import ssl
import struct
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.grpc.proto import grpc_predict_v2_pb2 as pb

STATUS_CONNECTION_ERROR = 0
STATUS_CLIENT_TIMEOUT = -1
STATUS_NOT_SENT = -2
STATUS_NAMES = {
    STATUS_CONNECTION_ERROR: "connection error",
    STATUS_CLIENT_TIMEOUT: "client timeout",
    STATUS_NOT_SENT: "not sent (client at its connection limit)",
}
MAX_RETRY_AFTER_S = 1.0


def multipart_request(host: str, port: int, path: str, image: bytes, filename: str, content_type: str) -> bytes:
    """A complete POST with one multipart part named 'file', ready to write to a socket."""
    return multipart_request_files(host, port, path, [(filename, image, content_type)])


def multipart_request_files(host: str, port: int, path: str, files: Sequence[tuple[str, bytes, str]]) -> bytes:
    """A complete POST with one multipart part named 'file' per (filename, data, content type)."""
    boundary = "bench" + uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for filename, data, content_type in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: resnet-serve-bench\r\nAccept: */*\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


V2_HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH_PREFIX = struct.Struct("<I")


def v2_bytes_tensor(elements: Sequence[bytes]) -> bytes:
    """BYTES elements in the binary tensor data extension's form: each with a 4-byte little-endian length prefix."""
    return b"".join(_LENGTH_PREFIX.pack(len(element)) + element for element in elements)


def v2_infer_header(
    input_name: str,
    datatype: str,
    shape: Sequence[int],
    binary_size: int,
    *,
    output_name: str | None = None,
    classification: int | None = None,
    binary_output: bool = True,
) -> dict[str, Any]:
    """The JSON header of an Open Inference Protocol request whose one input follows it as `binary_size` bytes.

    With `output_name`, the response carries that output only, as the classification extension's top
    `classification` strings when that is given; its data is binary when `binary_output`."""
    header: dict[str, Any] = {
        "inputs": [
            {
                "name": input_name,
                "datatype": datatype,
                "shape": list(shape),
                "parameters": {"binary_data_size": binary_size},
            }
        ]
    }
    if output_name is not None:
        parameters: dict[str, Any] = {"binary_data": binary_output}
        if classification is not None:
            parameters["classification"] = classification
        header["outputs"] = [{"name": output_name, "parameters": parameters}]
    else:
        header["parameters"] = {"binary_data_output": binary_output}
    return header


def v2_binary_request(
    host: str,
    port: int,
    model: str,
    *,
    input_name: str,
    datatype: str,
    shape: Sequence[int],
    data: bytes,
    output_name: str | None = None,
    classification: int | None = None,
    binary_output: bool = True,
) -> bytes:
    """A complete ``POST /v2/models/{model}/infer`` with Triton's binary tensor data extension, ready to write to a
    socket: the JSON header, then `data` (the input's binary form: `v2_bytes_tensor` of encoded images for BYTES,
    little-endian row-major floats for FP32), its length in `Inference-Header-Content-Length`."""
    header = json.dumps(
        v2_infer_header(
            input_name,
            datatype,
            shape,
            len(data),
            output_name=output_name,
            classification=classification,
            binary_output=binary_output,
        ),
        separators=(",", ":"),
    ).encode()
    body = header + data
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: resnet-serve-bench\r\n"
        f"Accept: */*\r\nContent-Type: application/octet-stream\r\n{V2_HEADER_LENGTH}: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def grpc_infer_request(
    model: str,
    *,
    input_name: str,
    datatype: str,
    shape: Sequence[int],
    data: bytes,
    output_name: str | None = None,
    classification: int | None = None,
) -> pb.ModelInferRequest:
    """A gRPC ``ModelInfer`` request carrying its one input in ``raw_input_contents`` (the same bytes as
    `v2_binary_request`'s binary part); with `output_name`, that output only, as the top `classification` strings
    when that is given."""
    from service.grpc.proto import grpc_predict_v2_pb2 as pb

    tensor = pb.ModelInferRequest.InferInputTensor(name=input_name, datatype=datatype, shape=list(shape))
    outputs = []
    if output_name is not None:
        output = pb.ModelInferRequest.InferRequestedOutputTensor(name=output_name)
        if classification is not None:
            output.parameters["classification"].int64_param = classification
        outputs.append(output)
    return pb.ModelInferRequest(model_name=model, inputs=[tensor], outputs=outputs, raw_input_contents=[data])


@dataclass(frozen=True)
class Response:
    status: int
    retry_after_s: float | None = None
    body: bytes = b""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; reopened on demand after the server closes it."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        """HTTPS with this context (each new connection makes a full handshake); None: plain HTTP."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20, ssl=self.tls, server_hostname="localhost" if self.tls else None
        )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def send(self, request: bytes) -> Response:
        """Write `request` and read the answer; connection failures come back as status 0, never raise.

        A kept-alive connection the server has meanwhile closed (idle timeout) fails before any answer arrives;
        the request is then sent once more on a new connection, as HTTP clients do.
        """
        reused = self._writer is not None
        try:
            return await self._exchange(request)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.close()
            nothing_received = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if not (reused and nothing_received):
                return Response(STATUS_CONNECTION_ERROR)
        except (asyncio.LimitOverrunError, ValueError):
            self.close()
            return Response(STATUS_CONNECTION_ERROR)
        try:
            return await self._exchange(request)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return Response(STATUS_CONNECTION_ERROR)

    async def _exchange(self, request: bytes) -> Response:
        if self._writer is None:
            await self._open()
        assert self._reader is not None and self._writer is not None
        # Not awaiting drain before reading: a server may answer (503) before it reads the body.
        self._writer.write(request)
        response, keep_alive = await self._read_response(self._reader)
        if not keep_alive or self._writer.transport.get_write_buffer_size() > 0:
            self.close()
        return response

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[Response, bool]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status_text = lines[0].split(" ", 2)[:2]
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append((await reader.readexactly(size + 2))[:size])
                if size == 0:
                    break
            body = b"".join(parts)
        keep_alive = headers.get("connection", "").lower() != "close" and version == "HTTP/1.1"
        retry_after = None
        if "retry-after" in headers:
            try:
                retry_after = float(headers["retry-after"])
            except ValueError:
                retry_after = None
        return Response(int(status_text), retry_after, body), keep_alive


@dataclass(frozen=True)
class Sample:
    """One request: when it was due (scheduled or sent), how long until its answer, and the answer's status."""

    due_at: float
    latency_s: float
    status: int

    @property
    def done_at(self) -> float:
        return self.due_at + self.latency_s


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation; works with inf); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadRun:
    """What one load run measured within its measurement window (the warm-up before it is not counted)."""

    samples: list[Sample]
    window_start: float
    window_s: float
    client_cpu_s: float
    server_cpu_s: float | None
    offered_rate: float | None = None
    concurrency: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def in_window(self) -> list[Sample]:
        """Requests due inside the window; their answers may arrive after it."""
        end = self.window_start + self.window_s
        return [s for s in self.samples if self.window_start <= s.due_at < end]

    @property
    def throughput(self) -> float:
        """Successful answers per second inside the window: the least-squares slope of their count against their
        arrival times. Answers that come in batches (32 at once every 3.5 s) would otherwise be counted 5 or 6
        batches at a time in a 20 s window, depending only on where it falls: 8.0 or 9.6 img/s for a server that
        serves 9.1. The slope runs through the batches' centres, wherever the window starts; for answers spread
        evenly it is their count over the window. When the answers span less than half the window (one or two
        batches in a short window: a slope through one cluster says nothing, 32 answers within 2 ms read as 16,000
        a second), or there are fewer than 3: count / window."""
        end = self.window_start + self.window_s
        done = sorted(s.done_at for s in self.samples if s.status == 200 and self.window_start <= s.done_at < end)
        if len(done) < 3 or done[-1] - done[0] < self.window_s / 2:
            return len(done) / self.window_s
        count = len(done)
        mean_t = sum(done) / count
        mean_n = (count - 1) / 2
        spread = sum((t - mean_t) ** 2 for t in done)
        return sum((t - mean_t) * (n - mean_n) for n, t in enumerate(done)) / spread

    def latencies(self, status: int | None = 200) -> list[float]:
        return [s.latency_s for s in self.in_window if status is None or s.status == status]

    def latency_with_failures(self) -> list[float]:
        """Latencies where every failed request counts as infinitely slow (the open-loop pass criterion)."""
        return [s.latency_s if s.status == 200 else math.inf for s in self.in_window]

    def status_counts(self) -> Counter[int]:
        return Counter(s.status for s in self.in_window)

    @property
    def client_cpu_fraction(self) -> float:
        """CPU the load generator used, in cores (1.0 = one core busy)."""
        return self.client_cpu_s / self.window_s

    @property
    def server_cpu_fraction(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.window_s


def _client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _WindowMeter:
    """Reads client and server CPU counters at the start and the end of the measurement window."""

    def __init__(self, server_cpu: Callable[[], float] | None) -> None:
        self._server_cpu = server_cpu
        self.client_cpu_s = 0.0
        self.server_cpu_s: float | None = None

    async def watch(self, start: float, end: float) -> None:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        client0 = _client_cpu_seconds()
        server0 = self._server_cpu() if self._server_cpu else None
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        self.client_cpu_s = _client_cpu_seconds() - client0
        if server0 is not None and self._server_cpu is not None:
            self.server_cpu_s = self._server_cpu() - server0


async def _timed_send(connection: HttpConnection, request: bytes, timeout_s: float) -> Response:
    try:
        return await asyncio.wait_for(connection.send(request), timeout_s)
    except TimeoutError:
        connection.close()
        return Response(STATUS_CLIENT_TIMEOUT)


class _Client:
    """One closed-loop client's connection: `send` a request, get its `Response` (never raises), `close`."""

    async def send(self, request: Any) -> Response:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _HttpClient(_Client):
    def __init__(self, host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self._connection = HttpConnection(host, port, tls)
        self._timeout_s = timeout_s

    async def send(self, request: bytes) -> Response:
        return await _timed_send(self._connection, request, self._timeout_s)

    async def close(self) -> None:
        self._connection.close()


async def _run_closed_loop(
    new_client: Callable[[], _Client],
    requests: Sequence[Any],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_cpu: Callable[[], float] | None,
) -> LoadRun:
    start = time.monotonic()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    samples: list[Sample] = []
    meter = _WindowMeter(server_cpu)

    async def client(index: int) -> None:
        connection = new_client()
        position = index
        try:
            while time.monotonic() < window_end:
                request = requests[position % len(requests)]
                position += 1
                sent_at = time.monotonic()
                response = await connection.send(request)
                samples.append(Sample(sent_at, time.monotonic() - sent_at, response.status))
                if response.status == 503:
                    pause = min(response.retry_after_s or MAX_RETRY_AFTER_S, MAX_RETRY_AFTER_S)
                    await asyncio.sleep(min(pause, max(0.0, window_end - time.monotonic())))
                elif response.status == STATUS_CONNECTION_ERROR:
                    await asyncio.sleep(0.01)  # a refused connection would otherwise spin
        finally:
            await connection.close()

    await asyncio.gather(meter.watch(window_start, window_end), *(client(i) for i in range(concurrency)))
    return LoadRun(samples, window_start, duration_s, meter.client_cpu_s, meter.server_cpu_s, concurrency=concurrency)


async def closed_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_cpu: Callable[[], float] | None = None,
    timeout_s: float = 120.0,
    tls: ssl.SSLContext | None = None,
) -> LoadRun:
    """`concurrency` clients in a loop for warm-up plus `duration_s`; requests are taken round-robin (over HTTPS
    with `tls`)."""
    return await _run_closed_loop(
        lambda: _HttpClient(host, port, timeout_s, tls),
        requests,
        concurrency=concurrency,
        warmup_s=warmup_s,
        duration_s=duration_s,
        server_cpu=server_cpu,
    )


# ------------------------------------------------------------------------------------------------------- gRPC

GRPC_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.use_local_subchannel_pool", 1),
)
"""Each client's channel: messages as large as the server takes, and a subchannel of its own, so that each client
has its own TCP connection (channels with equal arguments would otherwise share one), as each HTTP client has."""


def grpc_status(code: Any, retry_after: str | None) -> int:
    """A gRPC call's outcome as the HTTP status the same error has over HTTP (service/grpc/errors.py), so that
    load rows of both protocols read alike; a failure that never reached the server is a connection error."""
    import grpc

    if code == grpc.StatusCode.OK:
        return 200
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED or (code == grpc.StatusCode.UNAVAILABLE and retry_after):
        return 503  # Overloaded (RESOURCE_EXHAUSTED), or draining (UNAVAILABLE, with Retry-After)
    return {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.INTERNAL: 500,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    }.get(code, STATUS_CONNECTION_ERROR)


class _GrpcClient(_Client):
    def __init__(self, target: str, timeout_s: float) -> None:
        import grpc

        from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

        self._grpc = grpc
        self._channel = grpc.aio.insecure_channel(target, options=list(GRPC_CHANNEL_OPTIONS))
        self._infer = GRPCInferenceServiceStub(self._channel).ModelInfer
        self._timeout_s = timeout_s

    async def send(self, request: pb.ModelInferRequest) -> Response:
        try:
            await self._infer(request, timeout=self._timeout_s)
        except self._grpc.aio.AioRpcError as exc:
            retry_after = dict(exc.trailing_metadata() or ()).get("retry-after")
            try:
                retry_after_s = float(retry_after) if retry_after else None
            except ValueError:
                retry_after_s = None
            return Response(grpc_status(exc.code(), retry_after), retry_after_s)
        return Response(200)

    async def close(self) -> None:
        await self._channel.close()


async def grpc_wait_ready(target: str, timeout_s: float = 30.0) -> None:
    """Wait until the server's gRPC listener answers ServerReady with ready (it starts just after HTTP)."""
    import grpc

    from service.grpc.proto import grpc_predict_v2_pb2 as pb
    from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    give_up = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        while True:
            try:
                if (await stub.ServerReady(pb.ServerReadyRequest(), timeout=2.0)).ready:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > give_up:
                raise TimeoutError(f"gRPC at {target} not ready after {timeout_s:g} s")
            await asyncio.sleep(0.1)


async def grpc_closed_loop(
    target: str,
    requests: Sequence[pb.ModelInferRequest],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    server_cpu: Callable[[], float] | None = None,
    timeout_s: float = 120.0,
) -> LoadRun:
    """`closed_loop` over gRPC ``ModelInfer`` on grpc.aio: `concurrency` clients, each with its own channel (so
    its own connection) to `target` ("host:port"), each sending its next request when the previous answer
    arrives. Outcomes are recorded as HTTP statuses (`grpc_status`); RESOURCE_EXHAUSTED is a refusal (503),
    after which the client waits what the ``retry-after`` trailing metadata says, capped at 1 s."""
    return await _run_closed_loop(
        lambda: _GrpcClient(target, timeout_s),
        requests,
        concurrency=concurrency,
        warmup_s=warmup_s,
        duration_s=duration_s,
        server_cpu=server_cpu,
    )


async def open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    server_cpu: Callable[[], float] | None = None,
    seed: int = 0,
    max_connections: int = 512,
    timeout_s: float = 60.0,
) -> LoadRun:
    """Poisson arrivals at `rate` per second for warm-up plus `duration_s`, each on an idle connection."""
    rng = random.Random(seed)
    start = time.monotonic()
    window_start = start + warmup_s
    window_end = window_start + duration_s
    samples: list[Sample] = []
    idle: list[HttpConnection] = []
    open_count = 0
    tasks: set[asyncio.Task[None]] = set()
    meter = _WindowMeter(server_cpu)
    meter_task = asyncio.ensure_future(meter.watch(window_start, window_end))

    async def one(due_at: float, request: bytes, connection: HttpConnection) -> None:
        response = await _timed_send(connection, request, timeout_s)
        samples.append(Sample(due_at, time.monotonic() - due_at, response.status))
        idle.append(connection)

    due_at = start
    position = 0
    while True:
        due_at += rng.expovariate(rate)
        if due_at >= window_end:
            break
        delay = due_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            connection = idle.pop()
        elif open_count < max_connections:
            connection = HttpConnection(host, port)
            open_count += 1
        else:
            samples.append(Sample(due_at, 0.0, STATUS_NOT_SENT))
            continue
        task = asyncio.ensure_future(one(due_at, requests[position % len(requests)], connection))
        position += 1
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await meter_task
    if tasks:
        await asyncio.gather(*tasks)
    for connection in idle:
        connection.close()
    return LoadRun(samples, window_start, duration_s, meter.client_cpu_s, meter.server_cpu_s, offered_rate=rate)


@dataclass(frozen=True)
class RateTrial:
    rate: float
    run: LoadRun
    p99_s: float
    passed: bool


async def search_max_rate(
    run_at: Callable[[float], Awaitable[LoadRun]],
    *,
    low: float,
    high: float,
    steps: int,
    p99_limit_s: float,
    halvings: int = 3,
) -> list[RateTrial]:
    """Search for the highest Poisson rate whose p99 (failures counted as infinitely slow) stays under the limit.

    `run_at(rate)` runs one trial. The first trial is at `high`; if it passes, the search is done. Then `low`,
    halved up to `halvings` times until a rate passes (none may); then `steps - 2` bisections between the highest
    passing and the lowest failing rate. Trials come back in the order run.
    """
    trials: list[RateTrial] = []

    async def trial(rate: float) -> bool:
        run = await run_at(rate)
        p99 = percentile(run.latency_with_failures(), 0.99)
        ok = p99 < p99_limit_s and bool(run.in_window)
        trials.append(RateTrial(rate, run, p99, ok))
        return ok

    if await trial(high):
        return trials
    for _ in range(halvings + 1):
        if await trial(low):
            break
        high, low = low, low / 2
    else:
        return trials
    for _ in range(max(0, steps - 2)):
        middle = (low + high) / 2
        if await trial(middle):
            low = middle
        else:
            high = middle
    return trials


def best_passing(trials: Sequence[RateTrial]) -> RateTrial | None:
    passing = [t for t in trials if t.passed]
    return max(passing, key=lambda t: t.rate) if passing else None
