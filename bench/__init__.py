"""The load benchmark of the serving stack: ``python -m bench`` writes docs/BENCHMARKS.md.

One run measures, on the same machine: raw ONNX Runtime throughput per batch size with the server's own session
settings, preprocessing cost per image size, the resulting ceiling, our server (at its defaults, with admission
flags, with fixed batch sizes) and a naive FastAPI server under closed-loop and open-loop (Poisson) load, our
server over /v1 multipart, the Open Inference Protocol over HTTP and gRPC, and, last, ours and the naive server side
by side at concurrency 1 (both up, driven in alternating rounds). Modules, in the order a run uses them:

- `workload`: the models (exported with ``models.export`` when missing) and the test images;
- `measure`: raw inference and preprocessing timings, and the ceiling they imply;
- `servers`: starting the servers under test and reading their CPU and memory from /proc;
- `loadgen`: the lean asyncio HTTP/1.1 load generator (closed loop, Poisson open loop), its V2 request builder,
  and a gRPC closed loop on grpc.aio;
- `profiling`: py-spy samples of a server under load, summarised, and the CPU each thread group used (from /proc);
- `report`: the results as markdown, with each issue target met or missed;
- `naive_server`: the baseline as a user would write it.
"""
