"""Writes N distinct short instructions as JSONL (column `instruction`) for the LLM load benchmark.

Usage: make_prompts.py --rows N --out FILE.jsonl [--seeds seed_tasks.jsonl]
Takes the Self-Instruct seed tasks' `instruction` in order; past the last one it cycles, adding
" (variant K)" so that every row is distinct.
"""

import argparse
import json

SEEDS = "/work/shared/data/self_instruct/seed_tasks.jsonl"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default=SEEDS)
    a = ap.parse_args()

    seeds = list(dict.fromkeys(json.loads(l)["instruction"] for l in open(a.seeds) if l.strip()))
    with open(a.out, "w") as f:
        for i in range(a.rows):
            k, s = divmod(i, len(seeds))
            text = seeds[s] if k == 0 else f"{seeds[s]} (variant {k})"
            f.write(json.dumps({"instruction": text}) + "\n")


if __name__ == "__main__":
    main()
