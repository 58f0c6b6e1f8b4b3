"""Decode memory in bytes: the estimate per mode, and one budget that decodes wait for or are refused by."""

from __future__ import annotations

import threading

import pytest

from service.decode_memory import DecodeMemory, decode_cost_bytes
from service.errors import ImageTooLarge

SIDE = 1000


@pytest.mark.parametrize(
    "mode,color_mode,bytes_per_pixel",
    [
        ("RGB", "RGB", 4),  # Pillow keeps RGB as 4 bytes a pixel
        ("RGBA", "RGB", 8),  # decoded, then converted
        ("P", "RGB", 5),
        ("L", "L", 1),
        ("I;16", "L", 2),  # resized in its own mode: no converted copy
        ("F", "RGB", 4),
    ],
)
def test_the_estimate_counts_decoded_and_converted_pixels(mode, color_mode, bytes_per_pixel):
    cost = decode_cost_bytes(mode, (SIDE, SIDE), color_mode)
    assert SIDE * SIDE * bytes_per_pixel <= cost < SIDE * SIDE * bytes_per_pixel + 8 * 1024 * 1024


def test_an_exif_rotation_costs_a_copy():
    assert decode_cost_bytes("RGB", (SIDE, SIDE), "RGB", orientation=6) >= 8 * SIDE * SIDE


def test_a_decode_waits_for_room_and_one_too_large_is_refused():
    seen: list[int] = []
    memory = DecodeMemory(100, on_change=seen.append)
    with pytest.raises(ImageTooLarge, match="over the server's limit"), memory.hold(101):
        pass
    entered, release = threading.Event(), threading.Event()

    def second_decode() -> None:
        with memory.hold(40):
            entered.set()
            release.wait(30)

    with memory.hold(80):
        waiter = threading.Thread(target=second_decode)
        waiter.start()
        assert not entered.wait(0.2)  # 80 + 40 > 100: it waits (a short wait only guards the negative)
    assert entered.wait(30) and memory.in_use == 40
    release.set()
    waiter.join(timeout=30)
    assert memory.in_use == 0 and seen == [80, 0, 40, 0]


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (2, 200_000)])
def test_a_strip_costs_a_few_rows_to_resize_not_its_length(size):
    """A 1x100000 PNG is about 100 kB decoded; its resize reads a few source rows of the crop's box."""
    cost = decode_cost_bytes("L", size, "L", resize_size=28, crop_size=28, max_resized_pixels=50_000_000)
    assert cost < size[0] * size[1] * 2 + 1024 * 1024


def test_the_resize_of_a_photo_is_counted():
    small = decode_cost_bytes("RGB", (400, 300), "RGB")
    assert small >= 400 * 300 * 4 + 341 * 300 * 4  # the decoded pixels and the horizontal pass over the rows
