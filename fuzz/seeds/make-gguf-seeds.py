#!/usr/bin/env python3
"""Writes the GGUF seed corpus, fuzz/seeds/gguf/* (committed, without a
.gguf suffix, which .gitignore hides; rerun after a change to the GGUF
writer or the tiny model).

- tiny-header: the header of the model `rocm-llm demo-model` writes (the
  project's own writer), cut where the tensor data starts: the reader never
  reads further, so it parses in full.
- minimal, every-type: small hand-built headers that reach the
  value types, nested arrays and `general.alignment`, which the tiny model
  does not use.

Usage: fuzz/seeds/make-gguf-seeds.py PATH/TO/rocm-llm
"""

import os
import struct
import subprocess
import sys
import tempfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gguf")

# GGUF value types and the struct format of the fixed-size ones.
FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


def header_end(data):
    """The offset just past the tensor infos of a GGUF file."""
    pos = 0

    def take(fmt):
        nonlocal pos
        size = struct.calcsize("<" + fmt)
        (v,) = struct.unpack_from("<" + fmt, data, pos)
        pos += size
        return v

    def string():
        nonlocal pos
        n = take("Q")
        pos += n

    def value(ty):
        if ty in FIXED:
            take(FIXED[ty])
        elif ty == STRING:
            string()
        elif ty == ARRAY:
            elem, n = take("I"), take("Q")
            for _ in range(n):
                value(elem)
        else:
            raise ValueError(f"unknown GGUF value type {ty}")

    if data[:4] != b"GGUF":
        raise ValueError("not a GGUF file")
    pos = 4
    take("I")
    n_tensors, n_kv = take("Q"), take("Q")
    for _ in range(n_kv):
        string()
        value(take("I"))
    for _ in range(n_tensors):
        string()
        n_dims = take("I")
        pos += 8 * n_dims
        take("I")
        take("Q")
    return pos


def s(text):
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, payload):
    return s(key) + struct.pack("<I", ty) + payload


def gguf(kvs, tensors, version=3):
    """A GGUF header: kvs are encoded entries, tensors (name, dims, type, offset)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    for name, dims, ty, offset in tensors:
        out += s(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
    return out


def minimal():
    return gguf(
        [
            kv("general.architecture", STRING, s("llama")),
            kv("llama.block_count", 4, struct.pack("<I", 1)),
            kv("llama.context_length", 4, struct.pack("<I", 128)),
            kv("llama.embedding_length", 4, struct.pack("<I", 8)),
            kv("llama.attention.head_count", 4, struct.pack("<I", 2)),
        ],
        [("token_embd.weight", [8, 4], 0, 0)],
    )


def every_type():
    fixed = [kv(f"t.{ty}", ty, struct.pack("<" + fmt, 1)) for ty, fmt in sorted(FIXED.items())]
    nested = struct.pack("<IQ", ARRAY, 2)
    for n in (1, 2):
        nested += struct.pack("<IQ", 4, n) + b"".join(struct.pack("<I", i) for i in range(n))
    strings = struct.pack("<IQ", STRING, 2) + s("a") + s("bc")
    return gguf(
        [kv("general.alignment", 4, struct.pack("<I", 64))]
        + fixed
        + [
            kv("general.architecture", STRING, s("qwen2")),
            kv("qwen2.attention.head_count_kv", ARRAY, struct.pack("<IQ", 4, 2) + struct.pack("<II", 2, 1)),
            kv("nested", ARRAY, nested),
            kv("strings", ARRAY, strings),
        ],
        [("a", [32], 8, 0), ("b", [64, 2], 1, 64)],
        version=2,
    )


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tiny.gguf")
        subprocess.run([sys.argv[1], "demo-model", path, "--seed", "1"], check=True, stdout=subprocess.DEVNULL)
        with open(path, "rb") as f:
            data = f.read()
    seeds = {
        "tiny-header": data[: header_end(data)],
        "minimal": minimal(),
        "every-type": every_type(),
    }
    for name, body in seeds.items():
        assert header_end(body) == len(body), name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(body)
        print(f"{name}: {len(body)} bytes")


if __name__ == "__main__":
    main()
