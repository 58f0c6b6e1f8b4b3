"""``python -m bench.gpu``: the CUDA path, measured in one run on a machine with an NVIDIA GPU.

    pip install onnxruntime-gpu        # instead of onnxruntime (both install the `onnxruntime` module)
    python -m bench.gpu --output docs/GPU.md

1. Which execution providers this onnxruntime build has, and the GPU's name (nvidia-smi).
2. Raw throughput per batch size (1 to 64) of ResNet-50 fp32 and fp16 through the server's own runtime class on
   CUDA, and the best batch of each.
3. Our server on CUDA (``--providers cuda,cpu``, ``--max-batch-size auto``): what auto chose and the curve it
   measured (from /v1/models), then saturation throughput with 500x375 JPEGs at concurrency 64 against the ceiling
   (preprocessing spread over the CPU cores, inference at the best raw batch).
4. The CPU fallback: the same server asked for CUDA on a build without it must serve on the CPU provider and say
   so in /v1/models. On a machine without CUDA, only this part runs (steps 2 and 3 are reported as not run).

Models come from the benchmark's cache (bench/.cache), exported by ``python -m models.export`` when missing (fp16
with ``--fp16``); exporting needs the ``train`` extra (torch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench import loadgen, measure
from bench.servers import OURS, RunningServer
from bench.workload import DEFAULT_CACHE_DIR, REPO_ROOT, ModelCase, _run_export, ensure_images, ensure_model, model_case

logger = logging.getLogger("bench")

CUDA = "CUDAExecutionProvider"
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class GpuReport:
    providers: list[str]
    gpu: str
    raw: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    served: dict[str, object] = field(default_factory=dict)
    fallback: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "no NVIDIA GPU found (nvidia-smi absent or failing)"


def _fp16_case(cache_dir: Path) -> ModelCase:
    base = model_case("resnet50", cache_dir)
    case = ModelCase("resnet50-fp16", "resnet50-fp16", "ResNet-50 fp16", "fp16", cache_dir / "models" / "resnet50-fp16")
    if not case.path.is_file():
        case.folder.mkdir(parents=True, exist_ok=True)
        partial = case.folder / ".resnet50-fp16.partial.onnx"
        _run_export(["--torchvision", "resnet50", "--fp16", "--output", str(partial)])
        partial.replace(case.path)
    del base
    return case


def raw_cuda(case: ModelCase) -> list[dict[str, float]]:
    from service.runtime import OnnxModelRuntime

    runtime = OnnxModelRuntime(case.path, providers=["cuda"])
    if runtime.provider != CUDA:
        raise RuntimeError(f"{case.title}: the session runs on {runtime.provider}, not CUDA")
    spec = measure.model_spec(runtime)
    timings = measure.raw_inference(runtime, spec, BATCH_SIZES, min_seconds=2.0, min_runs=5)
    return [
        {
            "batch_size": t.batch_size,
            "ms_per_batch": t.seconds_per_batch * 1e3,
            "images_per_second": t.images_per_second,
        }
        for t in timings
    ]


def served_on_cuda(case: ModelCase, cache_dir: Path, raw: list[dict[str, float]]) -> dict[str, object]:
    photos = ensure_images(cache_dir)["small-jpeg"]
    log = cache_dir / "logs" / "gpu-server.log"
    with RunningServer(OURS, case, log, ("--providers", "cuda,cpu", "--max-batch-size", "auto")).wait_ready() as server:
        described = httpx.get(f"http://127.0.0.1:{server.port}/v1/models/{case.name}", timeout=30).json()
        requests = [
            loadgen.multipart_request(
                "127.0.0.1", server.port, server.classify_path, p.data, p.name, p.size.content_type
            )
            for p in photos
        ]
        run = asyncio.run(
            loadgen.closed_loop(
                "127.0.0.1",
                server.port,
                requests,
                concurrency=64,
                warmup_s=3.0,
                duration_s=15.0,
                server_cpu=server.cpu_seconds,
            )
        )
    spec_preprocess = measure.preprocessing(
        photos, measure.model_spec_of(case.path), jpeg_draft=True, min_seconds=1.0, min_runs=5
    )
    from service.runtime import available_cpus

    best = max(raw, key=lambda row: row["images_per_second"])
    ceiling = measure.ceiling(spec_preprocess.seconds_per_image, 1.0 / best["images_per_second"], available_cpus())
    return {
        "execution_provider": described["execution_provider"],
        "batching": described["batching"],
        "throughput": run.throughput,
        "statuses": {str(k): v for k, v in run.status_counts().items()},
        "ceiling": ceiling,
        "ratio": run.throughput / ceiling if ceiling else None,
        "server_cpu_cores": run.server_cpu_fraction,
    }


def cpu_fallback(cache_dir: Path) -> dict[str, object]:
    case = ensure_model(model_case("bundled", cache_dir))
    log = cache_dir / "logs" / "gpu-fallback.log"
    with RunningServer(OURS, case, log, ("--providers", "cuda,cpu")).wait_ready() as server:
        described = httpx.get(f"http://127.0.0.1:{server.port}/v1/models/{case.name}", timeout=30).json()
        answer = httpx.post(
            f"http://127.0.0.1:{server.port}{server.classify_path}",
            files=[("file", ("sneaker.png", (REPO_ROOT / "examples" / "sneaker.png").read_bytes(), "image/png"))],
            timeout=60,
        )
    warned = "not available in this onnxruntime build" in log.read_text()
    return {
        "execution_provider": described["execution_provider"],
        "status": answer.status_code,
        "top_label": answer.json()["results"][0]["top_k"][0]["label"] if answer.status_code == 200 else None,
        "warned_in_log": warned,
    }


def render(report: GpuReport, command: str) -> str:
    lines = [
        "# The CUDA path",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        f"- GPU: {report.gpu}",
        f"- onnxruntime providers: {', '.join(report.providers)}",
        "",
    ]
    for title, rows in report.raw.items():
        lines += [f"## Raw CUDA throughput, {title}", "", "| Batch | ms per batch | img/s |", "|---|---|---|"]
        lines += [f"| {r['batch_size']:.0f} | {r['ms_per_batch']:.2f} | {r['images_per_second']:.1f} |" for r in rows]
        lines.append("")
    if report.served:
        s = report.served
        lines += ["## Our server on CUDA", "", "```json", json.dumps(s, indent=1, default=str), "```", ""]
    lines += ["## CPU fallback", "", "```json", json.dumps(report.fallback, indent=1), "```", ""]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=None, help="markdown report (default: print it)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import onnxruntime as ort

    report = GpuReport(providers=ort.get_available_providers(), gpu=_gpu_name())
    if CUDA in report.providers:
        fp32 = ensure_model(model_case("resnet50", args.cache_dir))
        for case in (fp32, _fp16_case(args.cache_dir)):
            logger.info("raw CUDA throughput: %s", case.title)
            report.raw[case.title] = raw_cuda(case)
        report.served = served_on_cuda(fp32, args.cache_dir, report.raw[fp32.title])
    else:
        report.notes.append(
            "this onnxruntime build has no CUDA provider: raw CUDA throughput and the server on CUDA "
            "were not measured (install onnxruntime-gpu on a machine with an NVIDIA GPU)"
        )
    report.fallback = cpu_fallback(args.cache_dir)
    text = render(report, "python -m bench.gpu" + (f" --output {args.output}" if args.output else ""))
    if args.output:
        args.output.write_text(text)
    print(text)
    (args.cache_dir / "gpu.json").write_text(json.dumps(asdict(report), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
