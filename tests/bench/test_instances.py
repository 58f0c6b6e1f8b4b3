from __future__ import annotations

import pytest

from bench import instances
from bench.instances import Layout


def test_each_layout_serves_images_through_its_own_sessions(tmp_path, capsys):
    results = instances.main(
        [
            "--model",
            "bundled",
            "--layouts",
            "1x2b4,2x1b2",
            "--seconds",
            "0.3",
            "--rounds",
            "2",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    assert set(results) == {"1x2b4", "2x1b2"}
    assert all(len(rates) == 2 and min(rates) > 0 for rates in results.values())
    table = capsys.readouterr().out
    assert "| 2x1b2 | 2 x 1 | 2 |" in table
    assert "500x375 JPEG" in table


@pytest.mark.parametrize("text", ["2x1", "0x2b8", "2x1b0", "twoxone"])
def test_a_layout_names_sessions_threads_and_batch(text):
    with pytest.raises(ValueError, match="SESSIONSxTHREADSbBATCH"):
        Layout.parse(text)
    assert Layout.parse(" 2x1b8 ") == Layout(2, 1, 8)
