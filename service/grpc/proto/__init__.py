"""The Open Inference Protocol's gRPC service definition and the modules protoc generates from it (`generate`)."""
