"""How many calls one gRPC connection carries, as docs/SERVICE.md says gRPC core really behaves: well below
`grpc_max_concurrent_streams` every call is served; past it, gRPC core's rapid-reset defence (streams answered but
not yet freed count against the limit) refuses some with UNAVAILABLE / REFUSED_STREAM, and those were never
started on the server, so they are safe to retry."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import numpy as np
import pytest

from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from tests.integration.conftest import scrape
from tests.integration.test_v2_grpc import BUNDLED, GrpcServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    started = GrpcServerProcess(["--no-access-log"], tmp_path_factory.mktemp("grpc-limits") / "server.log").start()
    try:
        yield started.wait_ready()
    finally:
        started.kill()


def calls_on_one_channel(target: str, in_flight: int, rounds: int) -> Counter[str]:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    request = pb.ModelInferRequest(
        model_name=BUNDLED, inputs=[tensor], raw_input_contents=[np.zeros((1, 1, 28, 28), np.float32).tobytes()]
    )
    outcomes: Counter[str] = Counter()

    async def run() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = GRPCInferenceServiceStub(channel)

            async def caller() -> None:
                for _ in range(rounds):
                    try:
                        await stub.ModelInfer(request, timeout=120)
                        outcomes["OK"] += 1
                    except grpc.aio.AioRpcError as exc:
                        refused = exc.code() is grpc.StatusCode.UNAVAILABLE and "REFUSED_STREAM" in exc.details()
                        refused = refused or (
                            exc.code() is grpc.StatusCode.UNAVAILABLE and "error code 7" in exc.details()
                        )
                        outcomes["REFUSED_STREAM" if refused else f"{exc.code().name}: {exc.details()}"] += 1

            await asyncio.gather(*(caller() for _ in range(in_flight)))

    asyncio.run(run())
    return outcomes


def served_calls(server) -> float:
    samples = scrape(server.url)
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "resnet_serve_grpc_requests_total" and ("method", "ModelInfer") in labels
    )


def test_half_the_stream_limit_in_flight_is_always_served(server):
    outcomes = calls_on_one_channel(server.grpc_url, in_flight=50, rounds=6)
    assert outcomes == Counter({"OK": 300})


def test_past_the_stream_limit_calls_are_served_or_refused_unstarted(server):
    before = served_calls(server)
    outcomes = calls_on_one_channel(server.grpc_url, in_flight=300, rounds=2)
    assert set(outcomes) <= {"OK", "REFUSED_STREAM"}, outcomes
    assert outcomes["OK"] + outcomes["REFUSED_STREAM"] == 600 and outcomes["OK"] > 0
    # A refused call never reached the application: the server counted exactly the calls it answered.
    assert served_calls(server) - before == outcomes["OK"]
