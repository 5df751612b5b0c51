"""Compares two model directories tensor by tensor (e.g. drover's merge and mergekit's).

Usage: compare.py DIR_A DIR_B [--tolerance 1e-2]

Prints, per tensor kind, the largest absolute difference relative to the tensor's largest magnitude,
and the share of elements that are bit-identical after both are read as float32. Exits 1 when the
tensor names or shapes differ, or a difference exceeds the tolerance.
"""

import argparse
import glob
import os
import sys

import torch
from safetensors import safe_open


def tensors(d):
    out = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tolerance", type=float, default=1e-2)
    args = ap.parse_args()
    a, b = tensors(args.a), tensors(args.b)
    if set(a) != set(b):
        print(f"tensor names differ: only in A {sorted(set(a) - set(b))[:5]}, only in B {sorted(set(b) - set(a))[:5]}")
        sys.exit(1)
    worst, equal, total = 0.0, 0, 0
    for k in sorted(a):
        x, y = a[k].float(), b[k].float()
        if x.shape != y.shape:
            print(f"{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
            sys.exit(1)
        scale = max(y.abs().max().item(), 1e-12)
        rel = (x - y).abs().max().item() / scale
        worst = max(worst, rel)
        equal += (x == y).sum().item()
        total += x.numel()
    print(f"{len(a)} tensors, {total} elements: max |A-B| / max|B| = {worst:.3e}; bit-identical: {100 * equal / total:.2f}%")
    if worst > args.tolerance:
        sys.exit(1)


if __name__ == "__main__":
    main()
