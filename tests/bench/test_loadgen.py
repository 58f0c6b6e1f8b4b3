"""The load generator's pure parts: percentiles and the open-loop rate search (with a scripted server)."""

from __future__ import annotations

import asyncio
import math
import ssl

from bench.loadgen import HttpConnection, LoadRun, Sample, best_passing, multipart_request, percentile, search_max_rate


def test_percentile_is_nearest_rank_and_handles_infinity() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([1.0, math.inf], 0.99) == math.inf
    assert math.isnan(percentile([], 0.5))


def _run_with_latency(latency_s: float) -> LoadRun:
    samples = [Sample(due_at=10.0 + i * 0.01, latency_s=latency_s, status=200) for i in range(100)]
    return LoadRun(samples, window_start=10.0, window_s=1.0, client_cpu_s=0.0, server_cpu_s=None)


def test_rate_search_bisects_towards_the_highest_passing_rate() -> None:
    tried: list[float] = []

    async def run_at(rate: float) -> LoadRun:
        tried.append(rate)
        return _run_with_latency(0.050 if rate <= 70 else 0.500)  # the scripted server copes up to 70/s

    trials = asyncio.run(search_max_rate(run_at, low=20, high=100, steps=6, p99_limit_s=0.1))
    assert tried[:2] == [100, 20]
    best = best_passing(trials)
    assert best is not None and 65 <= best.rate <= 70
    assert all(trial.passed == (trial.rate <= 70) for trial in trials)


def test_rate_search_halves_the_low_rate_until_one_passes() -> None:
    async def run_at(rate: float) -> LoadRun:
        return _run_with_latency(0.050 if rate <= 6 else 0.500)

    trials = asyncio.run(search_max_rate(run_at, low=20, high=100, steps=4, p99_limit_s=0.1))
    assert [trial.rate for trial in trials] == [100, 20, 10, 5, 7.5, 6.25]
    assert best_passing(trials).rate == 5


def test_rate_search_gives_up_after_its_halvings() -> None:
    async def run_at(rate: float) -> LoadRun:
        return _run_with_latency(1.0)

    trials = asyncio.run(search_max_rate(run_at, low=20, high=100, steps=6, p99_limit_s=0.1, halvings=2))
    assert [trial.rate for trial in trials] == [100, 20, 10, 5]
    assert best_passing(trials) is None


def test_throughput_of_answers_in_batches_does_not_depend_on_where_the_window_falls() -> None:
    # 32 answers at once every 3.5 s (9.14 a second); a 20 s window holds 5 or 6 such batches depending on its start.
    samples = [Sample(batch * 3.5 - 1.0, 1.0, 200) for batch in range(20) for _ in range(32)]
    seen = []
    for start in (3.0, 3.4, 4.0, 5.2, 6.0, 6.9):
        run = LoadRun(samples, window_start=start, window_s=20.0, client_cpu_s=0.0, server_cpu_s=None)
        done = sum(1 for s in samples if start <= s.done_at < start + 20.0)
        assert done / 20.0 in (8.0, 9.6)  # what counting alone says
        seen.append(run.throughput)
    assert all(abs(value - 32 / 3.5) < 1e-6 for value in seen), seen


def test_throughput_of_answers_spread_evenly_is_their_rate() -> None:
    samples = [Sample(10.0 + i / 50, 0.02, 200) for i in range(1000)] + [Sample(12.0, 0.01, 503)] * 5
    run = LoadRun(samples, window_start=11.0, window_s=10.0, client_cpu_s=0.0, server_cpu_s=None)
    assert abs(run.throughput - 50.0) < 0.1
    few = LoadRun(samples[:2], window_start=10.0, window_s=1.0, client_cpu_s=0.0, server_cpu_s=None)
    assert few.throughput == 2.0


def test_throughput_of_one_batch_in_a_short_window_is_its_count_over_the_window() -> None:
    # A slope through one cluster (32 answers within 2 ms) would read as 16,000 a second.
    samples = [Sample(11.0 + i * 0.0000625, 1.0, 200) for i in range(32)]
    run = LoadRun(samples, window_start=10.0, window_s=5.0, client_cpu_s=0.0, server_cpu_s=None)
    assert run.throughput == 32 / 5.0


def test_failures_count_as_infinitely_slow() -> None:
    samples = [Sample(10.0 + i * 0.01, 0.01, 200) for i in range(98)] + [Sample(10.5, 0.001, 503)] * 2
    run = LoadRun(samples, window_start=10.0, window_s=1.0, client_cpu_s=0.0, server_cpu_s=None)
    assert percentile(run.latency_with_failures(), 0.99) == math.inf
    assert percentile(run.latencies(200), 0.99) == 0.01


def test_a_connection_the_server_closed_while_idle_is_reopened_and_the_request_resent() -> None:
    """A keep-alive connection dropped by the server (idle timeout) costs a reconnect, not a failed request."""
    answers = 0

    async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answers
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        await reader.readexactly(length)
        answers += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # keep-alive promised...
        await writer.drain()
        writer.close()  # ...and then dropped, as an idle timeout does

    async def scenario() -> list[int]:
        server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        connection = HttpConnection("127.0.0.1", port)
        request = multipart_request("127.0.0.1", port, "/x", b"\xff\xd8image", "a.jpg", "image/jpeg")
        first = await connection.send(request)
        statuses = [first.status]
        await asyncio.sleep(0.05)  # the server's close reaches the client
        second = await connection.send(request)
        statuses.append(second.status)
        bodies.extend([first.body, second.body])
        connection.close()
        server.close()
        await server.wait_closed()
        return statuses

    bodies: list[bytes] = []
    assert asyncio.run(scenario()) == [200, 200]
    assert answers == 2
    assert bodies == [b"ok", b"ok"]  # the soak checks every answer's body


def test_a_connection_speaks_tls_when_given_a_context(tmp_path) -> None:
    from tests.certificates import CertificateAuthority

    issued = CertificateAuthority("loadgen", tmp_path).issue_server()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(issued.certfile, issued.keyfile)
    seen: list[bool] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen.append(writer.get_extra_info("ssl_object") is not None)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def scenario() -> int:
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        connection = HttpConnection("127.0.0.1", port, ssl.create_default_context(cafile=str(issued.ca_file)))
        response = await connection.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.close()
        server.close()
        await server.wait_closed()
        return response.status

    assert asyncio.run(scenario()) == 200 and seen == [True]


def test_the_otlp_sink_answers_every_export_and_keeps_nothing() -> None:
    import httpx

    from bench.paired import OtlpSink, _environment

    sink = OtlpSink()
    try:
        answer = httpx.post(sink.endpoint + "/v1/traces", content=b"\x0a\x00", headers={"Content-Type": "x"})
        assert answer.status_code == 200
        assert dict(sink.environment())["OTEL_EXPORTER_OTLP_ENDPOINT"] == sink.endpoint
    finally:
        sink.close()
    assert _environment(["A=1", "B=x=y"]) == (("A", "1"), ("B", "x=y"))
