#!/usr/bin/env python3
"""Draws icons/icon.png (128x128 RGBA): a blue rounded square with a white bridge arch.

Standard library only, deterministic, so the committed PNG can be re-made and compared.
Run from anywhere: python3 make_icon.py [OUT]."""
import os
import struct
import sys
import zlib

SIZE = 128
BLUE = (0x33, 0x66, 0xCC, 255)
WHITE = (255, 255, 255, 255)
CLEAR = (0, 0, 0, 0)


def pixel(x: int, y: int):
    r = 22  # corner radius
    cx = min(max(x, r), SIZE - 1 - r)
    cy = min(max(y, r), SIZE - 1 - r)
    if (x - cx) ** 2 + (y - cy) ** 2 > r * r:
        return CLEAR
    # deck of the bridge
    if 84 <= y <= 92 and 18 <= x <= 109:
        return WHITE
    # arch: a ring between two radii, upper half, centred on the deck
    d2 = (x - 64) ** 2 + (y - 88) ** 2
    if y <= 88 and 38 * 38 <= d2 <= 46 * 46:
        return WHITE
    # pillars
    if 88 <= y <= 108 and (22 <= x <= 29 or 99 <= x <= 106):
        return WHITE
    return BLUE


def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "icon.png")
    raw = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(SIZE)) for y in range(SIZE)
    )
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9))
           + chunk(b"IEND", b""))
    with open(out, "wb") as f:
        f.write(png)


if __name__ == "__main__":
    main()
