"""Writes the tiny Llama-shaped models of examples/merge.yaml (standard library only).

A base and two "fine-tunes" (the base plus seeded noise), 2 layers, hidden size 16, stored as bf16
safetensors with a config.json and a stand-in tokenizer.json: real files in the layout transformers
reads, small enough to keep in the repository. The values are seeded: rerunning writes the same bytes.

Usage: python3 examples/scripts/make_tiny_models.py examples/models
"""

import json
import math
import os
import random
import struct
import sys

HIDDEN, INTER, LAYERS, VOCAB = 16, 32, 2, 64


def shapes():
    out = [("model.embed_tokens.weight", [VOCAB, HIDDEN])]
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", [HIDDEN]),
            (f"{p}.self_attn.q_proj.weight", [HIDDEN, HIDDEN]),
            (f"{p}.self_attn.k_proj.weight", [HIDDEN, HIDDEN]),
            (f"{p}.self_attn.v_proj.weight", [HIDDEN, HIDDEN]),
            (f"{p}.self_attn.o_proj.weight", [HIDDEN, HIDDEN]),
            (f"{p}.post_attention_layernorm.weight", [HIDDEN]),
            (f"{p}.mlp.gate_proj.weight", [INTER, HIDDEN]),
            (f"{p}.mlp.up_proj.weight", [INTER, HIDDEN]),
            (f"{p}.mlp.down_proj.weight", [HIDDEN, INTER]),
        ]
    return out + [("model.norm.weight", [HIDDEN]), ("lm_head.weight", [VOCAB, HIDDEN])]


def bf16(x):
    """Rounds to nearest even, as torch does."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    bits += 0x7FFF + ((bits >> 16) & 1)
    return struct.pack("<H", (bits >> 16) & 0xFFFF)


def write(path, tensors):
    os.makedirs(path, exist_ok=True)
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, (shape, values) in tensors.items():
        raw = b"".join(bf16(v) for v in values)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
              "num_key_value_heads": 4, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write(json.dumps({"stand-in tokenizer of": os.path.basename(path)}) + "\n")


def main():
    out = sys.argv[1]
    rng = random.Random(7)
    base = {n: (s, [rng.uniform(-0.1, 0.1) for _ in range(math.prod(s))]) for n, s in shapes()}
    write(os.path.join(out, "base"), base)
    for k, name in enumerate(["math", "code"]):
        r = random.Random(100 + k)
        write(os.path.join(out, name), {n: (s, [v + r.uniform(-0.02, 0.02) for v in vs]) for n, (s, vs) in base.items()})


if __name__ == "__main__":
    main()
