import json

from models import gradient_flow


def test_gradient_flow_writes_table_plot_and_json(tmp_path):
    gradient_flow.main(
        [
            "--steps",
            "3",
            "--grad-batches",
            "1",
            "--batch-size",
            "16",
            "--depths",
            "8",
            "14",
            "--limit-train",
            "256",
            "--threads",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "gradient_flow.json").read_text())
    assert set(report["nets"]) == {"plain-8", "resnet-8", "plain-14", "resnet-14"}
    assert len(report["nets"]["resnet-14"]["gradient_norms"]) == 14
    assert all(len(net["losses"]) == 3 for net in report["nets"].values())
    text = (tmp_path / "GRADIENT_FLOW.md").read_text()
    assert "| plain-14 | 14 |" in text and "gradient_flow.png" in text
    assert (tmp_path / "gradient_flow.png").read_bytes()[:4] == b"\x89PNG"

    # Re-rendering from the JSON reproduces the same document.
    (tmp_path / "again").mkdir()
    gradient_flow.main(["--render", str(tmp_path / "gradient_flow.json"), "--out", str(tmp_path / "again")])
    assert (tmp_path / "again" / "GRADIENT_FLOW.md").read_text() == text
