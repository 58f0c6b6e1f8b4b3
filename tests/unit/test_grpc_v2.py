"""The gRPC front end's pure parts: the generated code, the wire format against Triton's, the message conversions,
the status-code table and the server options."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as triton_config_pb
from tritonclient.grpc import service_pb2 as triton_pb

from service.config import Settings
from service.errors import (
    InvalidParameter,
    InvalidTensor,
    Overloaded,
    ServiceError,
    ShuttingDown,
    TooManyFiles,
    Unauthorized,
)
from service.grpc import errors, messages, v2
from service.grpc.proto import generate
from service.grpc.proto import grpc_predict_v2_pb2 as pb
from service.grpc.server import listen_address, server_options
from service.v2.codec import FP32


def test_the_committed_generated_modules_are_current():
    for name, text in generate.generate().items():
        assert generate.PROTO.with_name(name).read_text() == text, (
            f"{name} is not what {generate.PROTO.name} generates; run python -m service.grpc.proto.generate"
        )


def _fields(descriptor) -> dict[str, tuple[int, int, bool, str | None]]:
    return {
        f.name: (f.number, f.type, f.label == f.LABEL_REPEATED, f.message_type.full_name if f.message_type else None)
        for f in descriptor.fields
    }


def _compare(ours, theirs) -> None:
    assert ours.full_name == theirs.full_name
    assert _fields(ours) == _fields(theirs), ours.full_name
    for name, nested in ours.nested_types_by_name.items():
        _compare(nested, theirs.nested_types_by_name[name])
    for name, enum in ours.enum_types_by_name.items():
        expected = {v.name: v.number for v in theirs.enum_types_by_name[name].values}
        assert {v.name: v.number for v in enum.values} == expected, f"{ours.full_name}.{name}"


def test_the_wire_format_is_triton_s():
    """Every message of ours has Triton's full name, field names, numbers and types (ModelConfig's from Triton's
    model_config.proto), and every enum its values, so tritonclient.grpc and our server read each other's bytes;
    every method of ours has Triton's path and message types."""
    for name, ours in pb.DESCRIPTOR.message_types_by_name.items():
        theirs = (
            triton_pb.DESCRIPTOR.message_types_by_name.get(name)
            or triton_config_pb.DESCRIPTOR.message_types_by_name[name]
        )
        _compare(ours, theirs)
    for name, ours in pb.DESCRIPTOR.enum_types_by_name.items():
        theirs = triton_config_pb.DESCRIPTOR.enum_types_by_name[name]
        assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}, name
    ours_service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs_service = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours_service.full_name == v2.SERVICE_NAME == theirs_service.full_name
    for method in ours_service.methods:
        theirs = theirs_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            theirs.input_type.full_name,
            theirs.output_type.full_name,
        )
    assert {m.name for m in ours_service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }


# --- messages -----------------------------------------------------------------------------------------------------


def test_raw_input_contents_become_raw_tensors():
    request = pb.ModelInferRequest(model_name="m", id="r1", raw_input_contents=[b"\x01\x00\x00\x00x"])
    request.inputs.add(name="input", datatype="BYTES", shape=[1])
    converted = messages.infer_request(request)
    assert converted.id == "r1" and converted.outputs is None
    (tensor,) = converted.inputs
    assert (tensor.name, tensor.datatype, tensor.shape, bytes(tensor.raw)) == (
        "input",
        "BYTES",
        (1,),
        b"\x01\x00\x00\x00x",
    )


def test_typed_contents_become_values():
    request = pb.ModelInferRequest()
    images = request.inputs.add(name="input", datatype="BYTES", shape=[2])
    images.contents.bytes_contents.extend([b"a", b"bc"])
    batch = request.inputs.add(name="other", datatype=FP32, shape=[1, 3])
    batch.contents.fp32_contents.extend([0.5, 1.5, -2.0])
    first, second = messages.infer_request(request).inputs
    assert first.raw is None and first.values == [b"a", b"bc"]
    assert second.values.dtype == np.float32 and second.values.tolist() == [0.5, 1.5, -2.0]


def test_raw_contents_must_cover_every_input():
    request = pb.ModelInferRequest(raw_input_contents=[b"x"])
    request.inputs.add(name="a", datatype="BYTES", shape=[1])
    request.inputs.add(name="b", datatype="BYTES", shape=[1])
    with pytest.raises(InvalidTensor, match="1 raw_input_contents for 2 input"):
        messages.infer_request(request)


@pytest.mark.parametrize("field,value", [("int64_param", 3), ("uint64_param", 3)])
def test_classification_is_an_integer_output_parameter(field, value):
    request = pb.ModelInferRequest()
    setattr(request.outputs.add(name="logits").parameters["classification"], field, value)
    (output,) = messages.infer_request(request).outputs
    assert (output.name, output.k) == ("logits", 3)


def test_classification_of_another_type_is_refused_as_over_http():
    request = pb.ModelInferRequest()
    request.outputs.add(name="logits").parameters["classification"].string_param = "3"
    with pytest.raises(
        InvalidParameter,
        match=r"outputs\[0\]\.parameters\.classification must be an integer, "
        r"got '3'",
    ):
        messages.infer_request(request)


def test_shared_memory_is_refused():
    request = pb.ModelInferRequest()
    request.inputs.add(name="input", datatype="FP32", shape=[1]).parameters["shared_memory_region"].string_param = "r"
    with pytest.raises(InvalidParameter, match="shared memory is not supported"):
        messages.infer_request(request)


def test_outputs_leave_as_raw_contents():
    from service.inference import InferenceResult, OutputResult, StageTimings

    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = InferenceResult("m", "1", [OutputResult("logits", logits=logits)], StageTimings(0, 0, 0, 0))
    response = messages.infer_response(result, "r1")
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "r1")
    assert list(response.outputs[0].shape) == [2, 3] and response.outputs[0].datatype == FP32
    assert np.frombuffer(response.raw_output_contents[0], "<f4").tolist() == logits.reshape(-1).tolist()


# --- status codes ---------------------------------------------------------------------------------------------------


def _all_error_classes(base: type[ServiceError] = ServiceError) -> list[type[ServiceError]]:
    found = []
    for subclass in base.__subclasses__():
        found += [subclass, *_all_error_classes(subclass)]
    return found


def test_every_error_class_has_a_row_in_the_status_table():
    missing = [cls.__name__ for cls in _all_error_classes() if cls not in errors.STATUS_CODES]
    assert not missing, f"add these to service.grpc.errors.STATUS_CODES (and docs/SERVICE.md): {missing}"


@pytest.mark.parametrize(
    "error,code",
    [
        (InvalidTensor("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (TooManyFiles("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ShuttingDown("x"), grpc.StatusCode.UNAVAILABLE),
        (Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_status_codes(error, code):
    assert errors.status_code(error) is code


def test_an_unlisted_class_maps_by_its_http_status():
    teapot = ServiceError("x")
    teapot.status_code = 418  # type: ignore[misc]  # as api.errors makes them for HTTP's own errors
    assert errors.status_code(teapot) is grpc.StatusCode.INVALID_ARGUMENT
    assert errors.status_code(ServiceError("x")) is grpc.StatusCode.INTERNAL


def test_retry_after_is_the_only_header_that_becomes_metadata():
    assert errors.trailing_metadata(Overloaded("x")) == (("retry-after", "1"),)
    assert errors.trailing_metadata(ShuttingDown("x", headers={"Connection": "close"})) == ()


# --- server ----------------------------------------------------------------------------------------------------------


def test_server_options_follow_the_settings():
    options = dict(
        server_options(
            Settings(
                max_upload_bytes=2048,
                grpc_max_concurrent_streams=7,
                grpc_keepalive_time_s=30,
                grpc_keepalive_timeout_s=5,
            )
        )
    )
    assert options["grpc.max_receive_message_length"] == 2048
    assert options["grpc.max_concurrent_streams"] == 7
    assert (options["grpc.keepalive_time_ms"], options["grpc.keepalive_timeout_ms"]) == (30_000, 5_000)
    assert options["grpc.keepalive_permit_without_calls"] == 1 and options["grpc.so_reuseport"] == 0
    assert dict(server_options(Settings(), share_port=True))["grpc.so_reuseport"] == 1  # worker processes


def test_listen_address():
    assert listen_address("0.0.0.0", 8001) == "0.0.0.0:8001"
    assert listen_address("::", 8001) == "[::]:8001"


def test_grpc_port_must_differ_from_the_http_port():
    with pytest.raises(ValueError, match="grpc_port"):
        Settings(port=9000, grpc_port=9000)
    assert Settings(port=8001, grpc_port=0).grpc_port == 0
