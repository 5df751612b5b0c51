#!/usr/bin/env python3
"""What drover's input checks cost: two drover binaries side by side in one run.

BASE is a drover without the checks (e.g. a build of the commit before them), NEW one with them.
For each binary, alternating so that machine noise falls on both alike:

- a 1,000-stage chain (benches/README.md's `chain`): cold run (wall, CPU of drover and of
  everything it ran) and no-op rerun (drover's CPU; it runs nothing, so it must cost the same);
- a 2 GB input: `a` writes 2e9 random bytes, `b` runs `wc -c` on them; `drover run --force b`
  (wall), beside `cp` of the same 2 GB (the scheme the checks were chosen over: a copy of every
  input on every run).

Usage: benches/integrity/compare.py BASE NEW [--sizes-mb 2000] [--repeat 5]
Writes a table to stdout and JSON to benches/results/integrity.json.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def chain(n):
    w = max(len(str(n)), 4)
    lines = ["pipeline: bench", "params: {" + ", ".join(f"p{i:0{w}}: {i}" for i in range(1, n + 1)) + "}", "stages:"]
    for i in range(1, n + 1):
        s = f"s{i:0{w}}"
        lines.append(f"  {s}:")
        lines.append("    op: command")
        if i == 1:
            lines.append(f'    with: {{ run: "echo ${{params.p{i:0{w}}}} > ${{out.out}}" }}')
        else:
            lines.append(f"    in: {{ prev: s{i - 1:0{w}} }}")
            lines.append("    deps: [scripts/step.sh]")
            lines.append(
                f'    with: {{ run: "cat ${{in.prev}} > ${{out.out}} && echo ${{params.p{i:0{w}}}} >> ${{out.out}}" }}'
            )
        lines.append("    out: { out: blob }")
    return "\n".join(lines) + "\n"


def timed(argv, cwd):
    """Runs argv; returns (wall s, CPU s of it and everything it waited for, exit code, stderr)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, p.returncode, p.stderr


def check(code, stderr, what):
    if code != 0:
        sys.exit(f"{what} failed ({code}):\n{stderr[-2000:]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--stages", type=int, default=1000)
    ap.add_argument("--size-mb", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    bins = {"base": os.path.abspath(args.base), "new": os.path.abspath(args.new)}
    root = tempfile.mkdtemp(prefix="drover-integrity-")
    results = {"stages": args.stages, "size_mb": args.size_mb, "repeat": args.repeat, "runs": {}}
    try:
        # The chain, once per binary (each its own store).
        dirs = {}
        for name in bins:
            d = os.path.join(root, f"chain-{name}")
            os.makedirs(os.path.join(d, "scripts"))
            with open(os.path.join(d, "pipeline.yaml"), "w") as f:
                f.write(chain(args.stages))
            with open(os.path.join(d, "scripts", "step.sh"), "w") as f:
                f.write("#!/bin/sh\n# a dep of every stage but the first\n")
            dirs[name] = d
        rows = {name: {"cold_wall": [], "cold_cpu": [], "noop_cpu": [], "noop_wall": []} for name in bins}
        for name, binary in bins.items():
            wall, cpu, code, err = timed([binary, "run", "pipeline.yaml"], dirs[name])
            check(code, err, f"{name} cold run")
            rows[name]["cold_wall"].append(wall)
            rows[name]["cold_cpu"].append(cpu)
        for _ in range(args.repeat):
            for name, binary in bins.items():
                wall, cpu, code, err = timed([binary, "run", "pipeline.yaml"], dirs[name])
                check(code, err, f"{name} no-op rerun")
                if f"0 ran, {args.stages} cached" not in err:
                    sys.exit(f"{name}: the no-op rerun ran something:\n{err[-500:]}")
                rows[name]["noop_wall"].append(wall)
                rows[name]["noop_cpu"].append(cpu)
        # Cold runs again, alternating, on fresh stores.
        for _ in range(2):
            for name, binary in bins.items():
                shutil.rmtree(os.path.join(dirs[name], ".drover"))
                wall, cpu, code, err = timed([binary, "run", "pipeline.yaml"], dirs[name])
                check(code, err, f"{name} cold run")
                rows[name]["cold_wall"].append(wall)
                rows[name]["cold_cpu"].append(cpu)
        results["runs"]["chain"] = rows

        # One large input.
        big = {name: {"force_b_wall": []} for name in bins}
        d = os.path.join(root, "big")
        os.makedirs(d)
        size = args.size_mb * 1_000_000
        with open(os.path.join(d, "pipeline.yaml"), "w") as f:
            f.write(
                "stages:\n"
                f"  a: {{ op: command, with: {{ run: \"head -c {size} /dev/urandom > ${{out.out}}\" }}, out: {{ out: blob }} }}\n"
                "  b: { op: command, in: { x: a }, with: { run: \"wc -c < ${in.x} > ${out.out}\" }, out: { out: blob } }\n"
            )
        for name, binary in bins.items():
            store = os.path.join(d, f"store-{name}")
            wall, cpu, code, err = timed([binary, "run", "--store", store, "pipeline.yaml"], d)
            check(code, err, f"{name} big cold run")
        copies = []
        for _ in range(args.repeat):
            for name, binary in bins.items():
                store = os.path.join(d, f"store-{name}")
                wall, cpu, code, err = timed([binary, "run", "--store", store, "--force", "b", "pipeline.yaml"], d)
                check(code, err, f"{name} --force b")
                big[name]["force_b_wall"].append(wall)
            src = next(
                os.path.join(dp, f)
                for dp, _, fs in os.walk(os.path.join(d, "store-base", "objects"))
                for f in fs
                if os.path.getsize(os.path.join(dp, f)) == size
            )
            t0 = time.perf_counter()
            shutil.copyfile(src, os.path.join(d, "copy"))
            copies.append(time.perf_counter() - t0)
            os.remove(os.path.join(d, "copy"))
        big["cp"] = {"wall": copies}
        results["runs"]["big"] = big
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med = statistics.median
    print(f"{'':28} {'base':>10} {'new':>10} {'new/base':>9}")
    for label, key in [("chain cold run wall s", "cold_wall"), ("chain cold run CPU s", "cold_cpu"),
                       ("chain no-op rerun wall s", "noop_wall"), ("chain no-op rerun CPU s", "noop_cpu")]:
        b, n = med(rows["base"][key]), med(rows["new"][key])
        print(f"{label:28} {b:10.3f} {n:10.3f} {n / b:9.3f}")
    b, n = med(big["base"]["force_b_wall"]), med(big["new"]["force_b_wall"])
    print(f"{f'{args.size_mb} MB input, run b wall s':28} {b:10.3f} {n:10.3f} {n / b:9.3f}")
    print(f"{f'cp of the {args.size_mb} MB input s':28} {med(copies):10.3f}")
    out = os.path.join(os.path.dirname(__file__), "..", "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "integrity.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
