"""Writes the benchmark pipelines for drover and Snakemake, the same work in each:

  gen.py drover|snakemake chain|matrix N DIR

chain: N stages, each reads the previous one's file and writes its own.
matrix: N independent stages (a matrix for drover, a wildcard rule for Snakemake) and a
gather that reads them all.

Every job appends `<label> start|end <unix time>` to times.log in DIR, which compare.sh reads
to measure the time from a job's end to its dependent's start.
"""

import sys

tool, shape, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
STAMP = 'echo "{label} {what} $(date +%s.%N)" >> {log}'


def stamp(label, what):
    return STAMP.format(label=label, what=what, log=f"{out}/times.log")


if tool == "drover":
    lines = ["pipeline: bench", "stages:"]
    if shape == "chain":
        for i in range(n):
            run = f"{stamp(i, 'start')}; "
            if i > 0:
                run += "cat ${in.prev} > ${out.out}; "
            run += f"echo {i} >> ${{out.out}}; {stamp(i, 'end')}"
            inputs = f"in: {{ prev: s{i - 1:03d} }}, " if i > 0 else ""
            lines.append(f"  s{i:03d}: {{ op: command, {inputs}with: {{ run: '{run}' }}, out: {{ out: blob }} }}")
    else:
        values = ", ".join(str(i) for i in range(n))
        part = f"{stamp('p${matrix.i}', 'start')}; echo ${{matrix.i}} > ${{out.out}}; {stamp('p${matrix.i}', 'end')}"
        gather = f"{stamp('gather', 'start')}; cat ${{in.parts}}/* > ${{out.out}}; {stamp('gather', 'end')}"
        lines.append(f"  part: {{ op: command, matrix: {{ i: [{values}] }}, with: {{ run: '{part}' }}, out: {{ out: blob }} }}")
        lines.append(f"  gather: {{ op: command, in: {{ parts: \"part[*]\" }}, with: {{ run: '{gather}' }}, out: {{ out: blob }} }}")
    open(f"{out}/drover.yaml", "w").write("\n".join(lines) + "\n")
else:
    def shell(label, body):
        # Snakemake formats {..} in shell strings: braces of the stamp's own are doubled.
        return f"{stamp(label, 'start')}; {body}; {stamp(label, 'end')}"

    if shape == "chain":
        snake = f'''
rule all:
    input: "chain/s{n - 1:03d}.txt"

rule first:
    output: "chain/s000.txt"
    shell: '{shell(0, "echo 0 >> {output}")}'

rule step:
    input: lambda wc: "chain/s%03d.txt" % (int(wc.i) - 1)
    output: "chain/s{{i}}.txt"
    wildcard_constraints: i="(?!000)[0-9]{{3}}"
    shell: '{shell("{wildcards.i}", "cat {input} > {output}; echo {wildcards.i} >> {output}")}'
'''
    else:
        snake = f'''
rule all:
    input: "gather.txt"

rule part:
    output: "parts/p{{i}}.txt"
    shell: '{shell("p{wildcards.i}", "echo {wildcards.i} > {output}")}'

rule gather:
    input: expand("parts/p{{i}}.txt", i=range({n}))
    output: "gather.txt"
    shell: '{shell("gather", "cat {input} > {output}")}'
'''
    # `$(date +%s.%N)` holds no braces; Snakemake leaves it to the shell.
    open(f"{out}/Snakefile", "w").write(snake)
