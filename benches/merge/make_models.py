"""Writes Llama-shaped checkpoints for the merge benchmark: a base and fine-tunes (base + noise).

Usage: make_models.py OUT_DIR --hidden 1536 --inter 4096 --layers 16 --vocab 32000 --finetunes 2 --dtype bfloat16

Every model is one safetensors file (or shards with --shard-bytes), a config.json, and a stand-in
tokenizer.json. Values are seeded, so two runs write the same bytes.
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file


def shapes(hidden, inter, layers, vocab, kv):
    out = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", (hidden,)),
            (f"{p}.self_attn.q_proj.weight", (hidden, hidden)),
            (f"{p}.self_attn.k_proj.weight", (kv, hidden)),
            (f"{p}.self_attn.v_proj.weight", (kv, hidden)),
            (f"{p}.self_attn.o_proj.weight", (hidden, hidden)),
            (f"{p}.post_attention_layernorm.weight", (hidden,)),
            (f"{p}.mlp.gate_proj.weight", (inter, hidden)),
            (f"{p}.mlp.up_proj.weight", (inter, hidden)),
            (f"{p}.mlp.down_proj.weight", (hidden, inter)),
        ]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


def write(dirname, tensors, dtype, config, shard_bytes):
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(dirname, "tokenizer.json"), "w") as f:
        json.dump({"stand-in tokenizer of": os.path.basename(dirname)}, f)
    shards, current, size = [], {}, 0
    for name, t in tensors.items():
        b = t.numel() * t.element_size()
        if current and size + b > shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = t
        size += b
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(dirname, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, s in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(s, os.path.join(dirname, fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in s})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(dirname, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--inter", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--kv", type=int, default=0, help="k/v projection rows (default: hidden)")
    ap.add_argument("--finetunes", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--shard-bytes", type=int, default=1 << 62)
    ap.add_argument("--noise", type=float, default=0.01)
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    kv = a.kv or a.hidden
    gen = torch.Generator().manual_seed(1234)
    base = {n: (torch.rand(s, generator=gen) * 2 - 1) * 0.05 for n, s in shapes(a.hidden, a.inter, a.layers, a.vocab, kv)}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": a.hidden,
        "intermediate_size": a.inter,
        "num_hidden_layers": a.layers,
        "num_attention_heads": max(1, a.hidden // 64) if a.hidden % 64 == 0 else 1,
        "num_key_value_heads": max(1, kv // 64) if kv % 64 == 0 else 1,
        "vocab_size": a.vocab,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": a.dtype,
    }
    write(os.path.join(a.out, "base"), {n: t.to(dtype) for n, t in base.items()}, dtype, config, a.shard_bytes)
    for k in range(a.finetunes):
        g = torch.Generator().manual_seed(100 + k)
        ft = {n: (t + (torch.rand(t.shape, generator=g) * 2 - 1) * a.noise).to(dtype) for n, t in base.items()}
        write(os.path.join(a.out, f"ft{k + 1}"), ft, dtype, config, a.shard_bytes)


if __name__ == "__main__":
    main()
