"""The Open Inference Protocol (KServe V2): the tensor codec its REST and gRPC front ends share."""
