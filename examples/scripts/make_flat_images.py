"""Writes the flat-colour PNGs of examples/recaption.yaml (standard library only): 32x32, one
colour each, so that the synthetic projector (`mmproj: synthetic:colour`) has something it can see.

Usage: python3 examples/scripts/make_flat_images.py examples/data/recaption
"""

import os
import struct
import sys
import zlib

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (20, 40, 230)}


def png(path, rgb, size=32):
    raw = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, rgb in COLOURS.items():
    png(os.path.join(out, f"{name}.png"), rgb)
