"""The ROUGE-L diversity filter as Self-Instruct / Alpaca / Dromedary run it, with Google's
rouge_score: every candidate is scored against every seed and every kept candidate
(rouge_scorer._score_lcs on pre-tokenised texts, as Alpaca's generate_instruction.py does), and kept
iff the largest F-measure is <= the threshold. Single process.

Usage: baseline.py DIR [THRESHOLD]   (reads DIR/seeds.jsonl, DIR/candidates.jsonl)
Prints the seconds spent filtering and writes DIR/baseline_kept.txt (kept row indices).
"""

import json
import sys
import time

from rouge_score import rouge_scorer


def main():
    d = sys.argv[1]
    threshold = float(sys.argv[2]) if len(sys.argv) > 2 else 0.7
    seeds = [json.loads(l)["instruction"] for l in open(f"{d}/seeds.jsonl")]
    cands = [json.loads(l)["instruction"] for l in open(f"{d}/candidates.jsonl")]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    t0 = time.perf_counter()
    pool = [scorer._tokenizer.tokenize(s) for s in seeds]
    kept = []
    for i, c in enumerate(cands):
        tokens = scorer._tokenizer.tokenize(c)
        best = max((rouge_scorer._score_lcs(tokens, p).fmeasure for p in pool), default=0.0)
        if best <= threshold:
            kept.append(i)
            pool.append(tokens)
    secs = time.perf_counter() - t0
    with open(f"{d}/baseline_kept.txt", "w") as f:
        f.write("\n".join(map(str, kept)) + "\n")
    print(f"rouge_score: {len(kept)} of {len(cands)} kept in {secs:.2f} s")


if __name__ == "__main__":
    main()
