"""The PyTorch baseline for `reward_train`: the same model, loss, optimiser and per-epoch work on
the same pairs, on the CPU, timed. What `cargo bench --bench reward` measures drover against.

Written here from the op's documentation, not from drover's code: all-MiniLM-L6-v2 read from the
model directory (config.json, model.safetensors, tokenizer.json with padding off), each input
laid out as `[CLS] prompt [SEP] response [SEP]` in max_seq_length tokens (the prompt cut from the
left), identical inputs embedded once, a seeded 20% held out. Then, as TRL's RewardTrainer and
drover's op train:

- `--mode frozen`: unit-length mean-pooled embeddings of every input (no grad, length-sorted
  batches of 64), then a 384-256-1 ReLU MLP head;
- `--mode finetune`: the whole encoder and a linear head on its unit-length embedding (bias 0),
  batches padded on the right to their longest input.

Loss -log sigmoid(r+ - r-) over batches of 32 pairs (chosen and rejected in one forward), AdamW
(beta 0.9/0.999, eps 1e-8, weight decay 0), linear decay without warmup, gradients clipped to
global norm 1; after each epoch the rewards of every input (no grad), loss and accuracy on
train and validation, and a checkpoint of model and optimiser serialised to memory (drover
writes one into its memo). Prints one JSON line.

    python torch_train.py MODEL_DIR PAIRS.jsonl --mode frozen --epochs 10
"""

import argparse
import io
import json
import math
import random
import resource
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn


class Layer(nn.Module):
    def __init__(self, h, inter, heads, eps):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(h, h) for _ in range(4))
        self.ln1 = nn.LayerNorm(h, eps=eps)
        self.i = nn.Linear(h, inter)
        self.out = nn.Linear(inter, h)
        self.ln2 = nn.LayerNorm(h, eps=eps)

    def forward(self, x, attn_mask):
        b, l, h = x.shape
        split = lambda t: t.view(b, l, self.heads, h // self.heads).transpose(1, 2)
        ctx = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=attn_mask)
        a = self.ln1(self.o(ctx.transpose(1, 2).reshape(b, l, h)) + x)
        return self.ln2(self.out(F.gelu(self.i(a))) + a)


class Bert(nn.Module):
    """BERT as sentence-transformers runs it: mean pooling over real tokens, then L2 norm."""

    def __init__(self, model_dir):
        super().__init__()
        cfg = json.load(open(f"{model_dir}/config.json"))
        h, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.word = nn.Embedding(cfg["vocab_size"], h)
        self.pos = nn.Embedding(cfg["max_position_embeddings"], h)
        self.token_type = nn.Embedding(cfg["type_vocab_size"], h)
        self.ln = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(
            Layer(h, cfg["intermediate_size"], cfg["num_attention_heads"], eps) for _ in range(cfg["num_hidden_layers"])
        )
        w = load_file(f"{model_dir}/model.safetensors")
        ours = {
            "word.weight": "embeddings.word_embeddings.weight",
            "pos.weight": "embeddings.position_embeddings.weight",
            "token_type.weight": "embeddings.token_type_embeddings.weight",
            "ln.weight": "embeddings.LayerNorm.weight",
            "ln.bias": "embeddings.LayerNorm.bias",
        }
        names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "o": "attention.output.dense", "ln1": "attention.output.LayerNorm", "i": "intermediate.dense",
                 "out": "output.dense", "ln2": "output.LayerNorm"}
        for n in range(cfg["num_hidden_layers"]):
            for mine, theirs in names.items():
                for p in ("weight", "bias"):
                    ours[f"layers.{n}.{mine}.{p}"] = f"encoder.layer.{n}.{theirs}.{p}"
        self.load_state_dict({k: w[v] for k, v in ours.items()})

    def forward(self, ids, mask):
        l = ids.shape[1]
        x = self.ln(self.word(ids) + self.pos.weight[:l][None] + self.token_type.weight[0])
        attn = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask == 0, float("-inf"))[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attn)
        m = mask[:, :, None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=1)


def padded(rows):
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    mask = torch.zeros(ids.shape, dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r)
        mask[k, : len(r)] = 1
    return ids, mask


def length_batches(rows, size):
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    return [order[i : i + size] for i in range(0, len(order), size)]


def lay_out(prompt, response, cls, sep, max_tokens):
    response = response[: max_tokens - 3]
    room = max_tokens - 3 - len(response)
    prompt = prompt[len(prompt) - room :] if len(prompt) > room else prompt
    return [cls] + prompt + [sep] + response + [sep]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("pairs", help="JSONL of {prompt, chosen, rejected}")
    ap.add_argument("--mode", choices=["frozen", "finetune"], required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    import tokenizers

    started = time.perf_counter()
    tok = tokenizers.Tokenizer.from_file(f"{args.model_dir}/tokenizer.json")
    tok.no_padding()
    tok.no_truncation()
    max_tokens = json.load(open(f"{args.model_dir}/sentence_bert_config.json"))["max_seq_length"]
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    rows = [json.loads(l) for l in open(args.pairs)]
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r["rejected"])]
    enc = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    inputs, index, pairs = [], {}, []
    for k in range(len(rows)):
        p, c, r = enc[3 * k : 3 * k + 3]
        ids = [tuple(lay_out(p, c, cls, sep, max_tokens)), tuple(lay_out(p, r, cls, sep, max_tokens))]
        if ids[0] == ids[1]:
            continue
        pairs.append(tuple(index.setdefault(i, len(index)) for i in ids))
        for i in ids:
            if index[i] == len(inputs):
                inputs.append(list(i))
    rng = random.Random(args.seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_val = round(args.val_fraction * len(pairs))
    val = [pairs[i] for i in sorted(order[:n_val])]
    train = [pairs[i] for i in sorted(order[n_val:])]

    bert = Bert(args.model_dir)
    embed_seconds = 0.0
    if args.mode == "frozen":
        t0 = time.perf_counter()
        bert.eval()
        emb = torch.zeros(len(inputs), bert.ln.normalized_shape[0])
        with torch.no_grad():
            for b in length_batches(inputs, 64):
                emb[b] = bert(*padded([inputs[i] for i in b]))
        embed_seconds = time.perf_counter() - t0
        dim = emb.shape[1]
        model = nn.Sequential(nn.Linear(dim, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1))
        forward = lambda rows: model(emb[rows]).squeeze(1)

        def rewards():
            with torch.no_grad():
                return model(emb).squeeze(1)

        lr = args.lr or 1e-3
    else:
        head = nn.Linear(bert.ln.normalized_shape[0], 1)
        nn.init.zeros_(head.bias)
        model = nn.ModuleDict({"bert": bert, "head": head})
        forward = lambda rows: head(bert(*padded([inputs[i] for i in rows]))).squeeze(1)

        def rewards():
            out = torch.zeros(len(inputs))
            model.eval()
            with torch.no_grad():
                for b in length_batches(inputs, 64):
                    out[b] = head(bert(*padded([inputs[i] for i in b]))).squeeze(1)
            model.train()
            return out

        lr = args.lr or 5e-5

    def stats(ps, r):
        if not ps:
            return None
        c, j = r[[p[0] for p in ps]], r[[p[1] for p in ps]]
        return {"loss": float(-F.logsigmoid(c - j).mean()), "accuracy": float((c > j).float().mean())}

    steps_per_epoch = math.ceil(len(train) / args.batch)
    total = steps_per_epoch * args.epochs
    optim = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: max(0.0, (total - s) / max(1, total)))
    model.train()
    epochs = []
    t0 = time.perf_counter()
    step_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        order = list(range(len(train)))
        rng.shuffle(order)
        for at in range(0, len(order), args.batch):
            s0 = time.perf_counter()
            batch = [train[i] for i in order[at : at + args.batch]]
            r = forward([p[0] for p in batch] + [p[1] for p in batch])
            rc, rr = r[: len(batch)], r[len(batch) :]
            loss = -F.logsigmoid(rc - rr).mean()
            optim.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            loss.detach().item()  # as drover reads the loss each step
            step_seconds += time.perf_counter() - s0
        r = rewards()
        epochs.append({"epoch": epoch, "train": stats(train, r), "validation": stats(val, r)})
        checkpoint = io.BytesIO()
        torch.save({"model": model.state_dict(), "optim": optim.state_dict()}, checkpoint)
    train_seconds = time.perf_counter() - t0
    pairs_trained = len(train) * args.epochs
    print(json.dumps({
        "mode": args.mode, "pairs": len(pairs), "train_pairs": len(train), "val_pairs": len(val),
        "inputs": len(inputs), "tokens": sum(len(i) for i in inputs), "epochs": args.epochs,
        "embed_seconds": embed_seconds, "train_seconds": train_seconds, "step_seconds": step_seconds,
        "pairs_per_s": pairs_trained / train_seconds, "step_pairs_per_s": pairs_trained / step_seconds,
        "whole_seconds": time.perf_counter() - started, "last_epoch": epochs[-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    sys.exit(main())
