"""The Open Inference Protocol (KServe V2) over gRPC: a second listener in the same process and event loop as
HTTP, on the same data plane (`server.GrpcFrontEnd`)."""
