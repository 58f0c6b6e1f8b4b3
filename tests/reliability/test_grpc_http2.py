"""The gRPC port under hostile clients (issue 20): malformed protobuf, floods of health watches, and HTTP/2-level
attacks written frame by frame with the `h2` package (rapid reset, PING and SETTINGS floods, oversized metadata)
or with gRPC's own client (a compressed-message bomb). The invariant: a client with a key keeps being served,
the server's memory stays bounded, and every refusal is a status code with a plain message, never UNKNOWN."""

from __future__ import annotations

import socket
import struct
import threading

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import numpy as np
import pytest

from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from tests.integration.conftest import free_port, poll
from tests.integration.test_v2_grpc import GRPC_LISTENING
from tests.reliability.harness import MB, MODEL, probe

KEY = "grpc-reliability-key-0123456789"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MEMORY_SLACK_BYTES = 100 * MB
"""Growth of the server's resident memory an attack may cause at most (the attacks here would cost far more
unbounded: 20,000 streams, 200,000 frames)."""


@pytest.fixture(scope="module")
def server(launch, tmp_path_factory):
    keys = tmp_path_factory.mktemp("grpc-keys") / "keys"
    keys.write_text(f"ci:{KEY}\n")
    started = launch(
        "--grpc-port",
        str(free_port()),
        "--api-keys-file",
        str(keys),
        "--grpc-max-concurrent-rpcs",
        "8",
        "--grpc-max-health-watches",
        "6",
    )
    started.grpc_port = int(poll(lambda: GRPC_LISTENING.search(started.log()), "gRPC to listen").group(1))
    return started


def infer_request() -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    return pb.ModelInferRequest(
        model_name=MODEL, inputs=[tensor], raw_input_contents=[np.zeros((1, 1, 28, 28), np.float32).tobytes()]
    )


def keyed_infer(server) -> pb.ModelInferResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(infer_request(), metadata=[("authorization", f"Bearer {KEY}")], timeout=60)


class RawHttp2:
    """A hand-driven HTTP/2 connection to the gRPC port (the client preface and SETTINGS sent)."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.socket.sendall(self.h2.data_to_send())

    def headers(self, path: str, extra: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
        return [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        ]

    def events(self) -> list[h2.events.Event]:
        """What the server sends until it closes the connection or stays quiet for a while."""
        seen: list[h2.events.Event] = []
        self.socket.settimeout(5)
        try:
            while data := self.socket.recv(1 << 20):
                seen += self.h2.receive_data(data)
                if any(isinstance(event, h2.events.ConnectionTerminated) for event in seen):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return seen

    def close(self) -> None:
        self.socket.close()


def test_malformed_protobuf_is_invalid_argument_with_a_plain_message(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        for method in (MODEL_INFER, "/grpc.health.v1.Health/Check"):
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(method)(b"\x0a\x05ab", metadata=[("authorization", f"Bearer {KEY}")], timeout=60)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid" in refused.value.details() and "Error" not in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            next(iter(channel.unary_stream(HEALTH_WATCH)(b"\xff\xff\xff", timeout=60)))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert len(keyed_infer(server).raw_output_contents) == 1


def test_a_flood_of_health_watches_never_locks_keyed_clients_out(server):
    """Watches are bounded per connection (4) and in all (6 here), and count in no other limit: with the call
    limit at 8, a keyed client is served while every watch the server allows is open."""
    from grpc_health.v1 import health_pb2

    request = health_pb2.HealthCheckRequest(service="").SerializeToString()
    # A subchannel pool of its own each: otherwise gRPC shares one connection between channels to one address.
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=own_connection) for _ in range(4)]
    opened, refused = [], []
    try:
        for channel in channels:
            for _ in range(5):
                watch = channel.unary_stream(HEALTH_WATCH)(request, timeout=120)
                try:
                    next(iter(watch))
                    opened.append(watch)
                except grpc.RpcError as exc:
                    refused.append(exc)
        assert len(opened) == 6, f"{len(opened)} watches open"
        assert refused and all(exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED for exc in refused)
        assert all("health watches open" in exc.details() for exc in refused)
        for _ in range(3):
            assert len(keyed_infer(server).raw_output_contents) == 1
    finally:
        for watch in opened:
            watch.cancel()
        for channel in channels:
            channel.close()


def test_rapid_reset_leaves_keyed_clients_served_and_memory_bounded(server):
    reading = probe(server)
    before = reading.rss_bytes()
    attackers = [RawHttp2(server.grpc_port) for _ in range(2)]
    stop = threading.Event()

    def attack(connection: RawHttp2) -> None:
        try:
            for _ in range(10_000):
                if stop.is_set():
                    return
                stream = connection.h2.get_next_available_stream_id()
                connection.h2.send_headers(stream, connection.headers(MODEL_INFER))
                connection.h2.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
                connection.socket.sendall(connection.h2.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return  # the server ended the connection: a defence too

    threads = [threading.Thread(target=attack, args=(connection,)) for connection in attackers]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            assert len(keyed_infer(server).raw_output_contents) == 1
    finally:
        for thread in threads:
            thread.join(120)
        stop.set()
        for connection in attackers:
            connection.close()
    assert reading.rss_bytes() - before < MEMORY_SLACK_BYTES
    assert len(keyed_infer(server).raw_output_contents) == 1


def test_a_ping_flood_gets_goaway(server):
    connection = RawHttp2(server.grpc_port)
    ping = struct.pack(">I", 8)[1:] + bytes([6, 0]) + struct.pack(">I", 0) + b"12345678"
    try:
        for _ in range(50):
            connection.socket.sendall(ping * 100)
    except OSError:
        pass  # closed by the server already
    goaway = [event for event in connection.events() if isinstance(event, h2.events.ConnectionTerminated)]
    connection.close()
    assert goaway and goaway[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert b"too_many_pings" in (goaway[0].additional_data or b"")
    assert len(keyed_infer(server).raw_output_contents) == 1


def test_a_settings_flood_that_never_reads_its_acks_costs_bounded_memory(server):
    reading = probe(server)
    before = reading.rss_bytes()
    connection = RawHttp2(server.grpc_port)
    settings = struct.pack(">I", 6)[1:] + bytes([4, 0]) + struct.pack(">I", 0) + struct.pack(">HI", 3, 100)
    connection.socket.settimeout(5)
    try:
        for _ in range(200):
            connection.socket.sendall(settings * 1000)
    except OSError:
        pass  # the server stopped reading (its acknowledgements are not read) or closed: both bound it
    assert reading.rss_bytes() - before < MEMORY_SLACK_BYTES
    assert len(keyed_infer(server).raw_output_contents) == 1
    connection.close()


@pytest.mark.parametrize("size", [20_000, 200_000])
def test_oversized_metadata_is_resource_exhausted(server, size):
    options = [("grpc.max_metadata_size", 10**7), ("grpc.absolute_max_metadata_size", 10**7)]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=options)
    with channel, pytest.raises(grpc.RpcError) as refused:
        GRPCInferenceServiceStub(channel).ServerLive(
            pb.ServerLiveRequest(), metadata=[("x-padding", "a" * size)], timeout=60
        )
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(keyed_infer(server).raw_output_contents) == 1


def test_a_compressed_message_bomb_is_refused_before_it_is_inflated(server):
    """64 MiB of zeros gzip to 64 KiB; the message limit (32 MiB) applies to the decompressed size."""
    reading = probe(server)
    before = reading.rss_bytes()
    zeros = np.zeros(64 * 1024 * 1024 // 4, np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[len(zeros) // 784, 1, 28, 28])
    request = pb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[zeros.tobytes()])
    options = [("grpc.max_send_message_length", -1)]
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=options)
    with channel, pytest.raises(grpc.RpcError) as refused:
        GRPCInferenceServiceStub(channel).ModelInfer(
            request, compression=grpc.Compression.Gzip, metadata=[("authorization", f"Bearer {KEY}")], timeout=120
        )
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reading.rss_bytes() - before < MEMORY_SLACK_BYTES
    assert len(keyed_infer(server).raw_output_contents) == 1
