"""Train a CIFAR-style ResNet (or plain net) on Fashion-MNIST.

    python -m models.train --arch resnet20 --epochs 60 --out runs/resnet20

Writes to --out: `checkpoint.pt` (after every epoch; `--resume` continues from it bit for bit), `metrics.json`
(per-epoch curves, timings, machine) and `curves.png`. A run is deterministic for a given seed on a given device.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import data
from models.resnet import CifarResNet, CifarResNetConfig, parse_cifar_arch

CHECKPOINT_FORMAT = "resnet-serve-checkpoint/1"
CHECKPOINT_NAME = "checkpoint.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet20", help="resnetN or plainN, N = 6n+2 (20, 32, 44, 56, 110)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, Nesterov momentum)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument(
        "--schedule",
        choices=("cosine", "step", "constant"),
        default="cosine",
        help="cosine: warm-up then cosine decay to 0; step: x0.1 at 50%% and 75%% of the epochs",
    )
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear learning-rate warm-up")
    p.add_argument("--padding", type=int, default=2, help="random-crop padding in pixels (0 turns crops off)")
    p.add_argument("--no-flip", action="store_true", help="turn off random horizontal flips")
    p.add_argument("--erase-prob", type=float, default=0.5, help="random-erasing probability (0 turns it off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--data-dir", type=Path, default=None, help=f"Fashion-MNIST IDX folder (default {data.DEFAULT_DATA_DIR})"
    )
    p.add_argument("--out", type=Path, default=Path("runs/resnet20"), help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--stop-after-epoch",
        type=int,
        default=None,
        help="stop after this epoch (the schedule still spans --epochs); continue later with --resume",
    )
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training images (smoke tests)")
    p.add_argument("--limit-test", type=int, default=None, help="use only the first N test images (smoke tests)")
    return p.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_deterministic(seed: int, device: torch.device) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")


def learning_rate_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 0.01 if progress >= 0.75 else 0.1 if progress >= 0.5 else 1.0


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """(mean loss, top-1 accuracy) on uint8 images."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = data.normalise(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        logits = model(x)
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return total_loss / len(labels), correct / len(labels)


def save_plot(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train")
    ax_acc.plot(epochs, [100 * h["test_accuracy"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_description(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def train(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    make_deterministic(args.seed, device)
    arch = parse_cifar_arch(args.arch)
    config = CifarResNetConfig(depth=arch.depth, residual=arch.residual, in_channels=1, num_classes=len(data.LABELS))

    train_split = data.load_split("train", args.data_dir)
    test_split = data.load_split("test", args.data_dir)
    train_images = torch.from_numpy(train_split.images[: args.limit_train]).to(device)
    train_labels = torch.from_numpy(train_split.labels[: args.limit_train]).to(device)
    test_images = torch.from_numpy(test_split.images[: args.limit_test]).to(device)
    test_labels = torch.from_numpy(test_split.labels[: args.limit_test]).to(device)

    model = CifarResNet(config).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=args.momentum,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(train_labels) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(args.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup_steps, args.schedule)
    )
    generator = torch.Generator().manual_seed(args.seed)
    fill = (0.0 - data.MEAN) / data.STD

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = args.out / CHECKPOINT_NAME
    history: list[dict] = []
    start_epoch = 0
    if args.resume:
        if not checkpoint_path.is_file():
            sys.exit(f"--resume: no checkpoint at {checkpoint_path}")
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch = state["history"], state["epoch"]
        print(f"resumed from {checkpoint_path} after epoch {start_epoch}")

    run_start = time.monotonic()
    last_epoch = min(args.epochs, args.stop_after_epoch or args.epochs)
    for epoch in range(start_epoch, last_epoch):
        model.train()
        epoch_start = time.monotonic()
        order = torch.randperm(len(train_labels), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False, disable=None
        )
        for step in bar:
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            x = data.normalise(train_images[index])
            x = data.augment(
                x, generator, fill=fill, padding=args.padding, flip=not args.no_flip, erase_probability=args.erase_prob
            )
            y = train_labels[index]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        train_seconds = time.monotonic() - epoch_start
        test_loss, test_accuracy = evaluate(model, test_images, test_labels)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(loss_sum) / len(train_labels),
            "train_accuracy": int(correct) / len(train_labels),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "lr": optimizer.param_groups[0]["lr"],
            "train_seconds": train_seconds,
        }
        history.append(record)
        print(
            f"epoch {epoch + 1:3d}/{args.epochs}  train loss {record['train_loss']:.4f}  "
            f"train acc {100 * record['train_accuracy']:.2f}%  test acc {100 * test_accuracy:.2f}%  "
            f"({train_seconds:.1f}s)",
            flush=True,
        )
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "arch": config.name,
                "config": config.to_dict(),
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "history": history,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "dataset": "fashion-mnist",
                "labels": data.LABELS,
                "mean": [data.MEAN],
                "std": [data.STD],
                "image_size": int(train_images.shape[-1]),
            },
            checkpoint_path,
        )

    metrics = {
        "arch": config.name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": args.epochs,
        "final_test_accuracy": history[-1]["test_accuracy"] if history else None,
        "train_seconds_total": sum(h["train_seconds"] for h in history),
        "wall_seconds_this_invocation": time.monotonic() - run_start,
        "command": "python -m models.train " + " ".join(sys.argv[1:]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_description(device),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "history": history,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    save_plot(history, args.out / "curves.png", f"{config.name} on Fashion-MNIST")
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        metrics = train(args)
    except data.DatasetError as exc:
        sys.exit(f"error: {exc}")
    print(f"final test accuracy {100 * metrics['final_test_accuracy']:.2f}% -> {args.out}")


if __name__ == "__main__":
    main()
