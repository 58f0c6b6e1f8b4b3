import pytest

from models import train


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A real (tiny) training run through the CLI: ResNet-8, one epoch on 256 images."""
    out = tmp_path_factory.mktemp("run")
    train.main(
        [
            "--arch",
            "resnet8",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--limit-train",
            "256",
            "--limit-test",
            "64",
            "--threads",
            "2",
            "--out",
            str(out),
        ]
    )
    return out
