"""Writes candidate instructions for the ROUGE-L filter benchmark: real Self-Instruct instructions
(seed tasks and user-oriented ones, from shared/data/self_instruct, Apache-2.0) and seeded variants of
them (words dropped, swapped in or moved), so that both near-duplicates and new texts occur.

Usage: make_data.py SELF_INSTRUCT_DIR OUT_DIR N
Writes OUT_DIR/seeds.jsonl (the 175 seed instructions) and OUT_DIR/candidates.jsonl (N rows).
"""

import json
import random
import sys


def main():
    src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seeds = [json.loads(l)["instruction"] for l in open(f"{src}/seed_tasks.jsonl")]
    users = [json.loads(l)["instruction"] for l in open(f"{src}/user_oriented_instructions.jsonl")]
    real = seeds + users
    vocab = sorted({w for t in real for w in t.split()})
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        words = rng.choice(real).split()
        for _ in range(rng.choice([0, 1, 2, 4, 8, 16])):
            op = rng.random()
            i = rng.randrange(len(words))
            if op < 0.4 and len(words) > 3:
                del words[i]
            elif op < 0.8:
                words[i] = rng.choice(vocab)
            else:
                words.insert(i, rng.choice(vocab))
        if rng.random() < 0.3:
            other = rng.choice(real).split()
            words = words[: len(words) // 2] + other[len(other) // 2 :]
        rows.append(" ".join(words))
    with open(f"{out}/seeds.jsonl", "w") as f:
        for s in seeds:
            f.write(json.dumps({"instruction": s}) + "\n")
    with open(f"{out}/candidates.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({"instruction": r}) + "\n")


if __name__ == "__main__":
    main()
