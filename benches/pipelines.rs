//! Scale benchmark: generates chain, wide and layered pipelines of `command` stages and times the
//! release `drover` binary on them (cold run, no-op rerun, `plan`, incremental rerun).
//!
//! Run with `cargo bench --bench pipelines`; knobs and the meaning of each column are in
//! `benches/README.md`. Results go to stdout as a table and to `benches/results/pipelines.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

/// Cargo builds the binary for bench targets with the bench profile (release), so this path is
/// always fresh: no staleness check of our own.
const DROVER: &str = env!("CARGO_BIN_EXE_drover");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// Stage i reads stage i-1.
    Chain,
    /// N-1 independent stages and one join that reads them all.
    Wide,
    /// N/10 layers of 10; every stage of a layer reads all 10 stages of the layer before (and
    /// writes their checksum and its param).
    Layered,
}

const LAYER_WIDTH: usize = 10;

impl Shape {
    fn parse(s: &str) -> Option<Shape> {
        match s.trim() {
            "chain" => Some(Shape::Chain),
            "wide" => Some(Shape::Wide),
            "layered" => Some(Shape::Layered),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::Wide => "wide",
            Shape::Layered => "layered",
        }
    }

    /// The 1-based stage whose param the incremental phase overrides: just past the middle, so
    /// that a chain reruns exactly N/2 stages.
    fn mid(n: usize) -> usize {
        n / 2 + 1
    }

    /// How many stages an override of stage `mid`'s param must rerun.
    fn incremental_reruns(self, n: usize) -> usize {
        let mid = Shape::mid(n);
        match self {
            Shape::Chain => n - mid + 1,
            Shape::Wide => 2, // the stage and the join
            Shape::Layered => 1 + LAYER_WIDTH * (n / LAYER_WIDTH - 1 - (mid - 1) / LAYER_WIDTH),
        }
    }
}

/// Stage and param names are zero-padded to the width of N, never narrower than the issue's
/// example (`s0001`, `p0001`), so its first two stages are generated verbatim.
fn width(n: usize) -> usize {
    n.to_string().len().max(4)
}

/// The pipeline YAML for a shape. `benches/snakemake/compare.sh` generates the same text; keep
/// the two in step.
fn generate(shape: Shape, n: usize) -> String {
    let w = width(n);
    let mut y = String::with_capacity(n * 160);
    y.push_str("pipeline: bench\nparams: {");
    for i in 1..=n {
        let sep = if i == 1 { " " } else { ", " };
        write!(y, "{sep}p{i:0w$}: {i}").unwrap();
    }
    y.push_str(" }\nstages:\n");
    for i in 1..=n {
        // Upstream ports (name, stage) of stage i.
        let ins: Vec<(String, usize)> = match shape {
            Shape::Chain if i > 1 => vec![("prev".to_string(), i - 1)],
            Shape::Wide if i == n && n > 1 => (1..n).map(|j| (format!("i{j:0w$}"), j)).collect(),
            Shape::Layered if i > LAYER_WIDTH => {
                let first = (i - 1) / LAYER_WIDTH * LAYER_WIDTH - LAYER_WIDTH + 1;
                (0..LAYER_WIDTH).map(|k| (format!("p{k}"), first + k)).collect()
            }
            _ => vec![],
        };
        writeln!(y, "  s{i:0w$}:\n    op: command").unwrap();
        if !ins.is_empty() {
            let ports: Vec<String> = ins.iter().map(|(p, s)| format!("{p}: s{s:0w$}")).collect();
            writeln!(y, "    in: {{ {} }}", ports.join(", ")).unwrap();
        }
        if i > 1 {
            y.push_str("    deps: [scripts/step.sh]\n");
        }
        let run = if ins.is_empty() {
            format!("echo ${{params.p{i:0w$}}} > ${{out.out}}")
        } else {
            let cats: Vec<String> = ins.iter().map(|(p, _)| format!("${{in.{p}}}")).collect();
            // Concatenating all ten inputs would grow outputs tenfold per layer (2.4 GB each by
            // layer 9), so a layered stage keeps a checksum of its inputs: still changed by any
            // change upstream.
            let fold = if shape == Shape::Layered { " | cksum" } else { "" };
            format!("cat {}{fold} > ${{out.out}} && echo ${{params.p{i:0w$}}} >> ${{out.out}}", cats.join(" "))
        };
        writeln!(y, "    with: {{ run: \"{run}\" }}\n    out: {{ out: blob }}").unwrap();
    }
    y
}

/// Writes the pipeline and its `scripts/step.sh` dep into `dir`; returns the pipeline file.
fn write_pipeline(dir: &Path, shape: Shape, n: usize) -> PathBuf {
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(dir.join("scripts/step.sh"), "#!/bin/sh\n# A dep of every stage but the first.\n").unwrap();
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, generate(shape, n)).unwrap();
    file
}

/// What one drover invocation cost.
#[derive(Clone, Debug)]
struct Sample {
    wall_s: f64,
    /// user+sys of the drover process alone (all its threads).
    drover_cpu_s: f64,
    /// user+sys of the processes drover waited for (`sh` and what it forks).
    child_cpu_s: f64,
    /// ru_maxrss of wait4: the larger of drover's peak and any single child's; `sh` peaks at
    /// about 1-2 MiB, so in practice drover's own.
    peak_rss_kib: u64,
    exit_code: i32,
    /// Killed after DROVER_BENCH_TIMEOUT seconds.
    timed_out: bool,
    stdout: String,
    stderr: String,
}

/// How long one drover invocation may take (DROVER_BENCH_TIMEOUT, seconds; default 900).
fn timeout() -> Duration {
    let secs = std::env::var("DROVER_BENCH_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(900);
    Duration::from_secs(secs)
}

/// Runs drover with `args` in `dir` and measures it.
///
/// `wait4` reports the zombie's usage with RUSAGE_BOTH semantics: its own CPU plus that of every
/// child it waited for. To split the two, wait first with WNOWAIT, which leaves the zombie in
/// place, and read its `/proc/PID/stat` (utime/stime and cutime/cstime, in clock ticks); then
/// reap it with `wait4` for microsecond totals and the peak RSS. drover's own CPU is the total
/// less the children's, so it is exact when nothing was spawned and within a tick otherwise.
fn measure(dir: &Path, args: &[&str]) -> Sample {
    let out_path = dir.join("bench.stdout");
    let err_path = dir.join("bench.stderr");
    let start = Instant::now();
    // Output goes to files, not pipes: nothing reads pipes while we block in waitid.
    let child = Command::new(DROVER)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {DROVER}: {e}"));
    let pid = child.id() as libc::pid_t;
    // `child` is never waited on through std; dropping it neither waits nor kills.
    drop(child);
    // A watchdog kills drover after the time limit. It is joined before the reap below, so the
    // pid it may signal is still ours (an unreaped zombie at worst).
    let (exited, exited_rx) = std::sync::mpsc::channel::<()>();
    let limit = timeout();
    let watchdog = std::thread::spawn(move || {
        let fired = exited_rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout);
        if fired {
            // SAFETY: kill(2) on our own unreaped child; no memory involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        fired
    });

    loop {
        // SAFETY: siginfo_t is plain data for which all-zero is valid; waitid only writes to it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child; WNOWAIT leaves it a zombie so /proc/PID stays readable.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "waitid: {err}");
    }
    let wall_s = start.elapsed().as_secs_f64();
    drop(exited);
    let timed_out = watchdog.join().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat of the zombie");
    // Fields after the `)` that ends the command name start at field 3 (state); utime is 14.
    let fields: Vec<u64> =
        stat.rsplit_once(')').unwrap().1.split_whitespace().skip(11).take(4).map(|f| f.parse().unwrap()).collect();
    // SAFETY: sysconf has no memory effects.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let child_cpu_s = (fields[2] + fields[3]) as f64 / tick;

    let mut status = 0;
    // SAFETY: rusage is plain data for which all-zero is valid; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: reaps our own child, already exited; the pointers are to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(err.kind(), std::io::ErrorKind::Interrupted, "wait4: {err}");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let total_cpu_s = secs(usage.ru_utime) + secs(usage.ru_stime);
    let exit_code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -libc::WTERMSIG(status) };
    Sample {
        wall_s,
        drover_cpu_s: (total_cpu_s - child_cpu_s).max(0.0),
        child_cpu_s,
        peak_rss_kib: usage.ru_maxrss as u64,
        exit_code,
        timed_out,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Cold,
    Noop,
    Plan,
    Incremental,
    /// `plan` on a store that has never run (100k section).
    PlanCold,
    Validate,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Cold => "cold run",
            Phase::Noop => "no-op rerun",
            Phase::Plan => "plan",
            Phase::Incremental => "incremental",
            Phase::PlanCold => "plan (cold store)",
            Phase::Validate => "validate",
        }
    }
}

/// One table row: a phase's sample with the stage counts drover reported and what they should be.
struct Row {
    shape: Shape,
    n: usize,
    phase: Phase,
    sample: Sample,
    /// (ran or to run, cached) from drover's summary line; None if it printed none.
    counts: Option<(usize, usize)>,
    expected: (usize, usize),
    repeats: usize,
}

impl Row {
    fn ok(&self) -> bool {
        self.sample.exit_code == 0 && self.counts == Some(self.expected)
    }

    fn check(&self) -> String {
        match self.counts {
            _ if self.sample.timed_out => format!("TIMEOUT: killed after {} s", timeout().as_secs()),
            _ if self.sample.exit_code != 0 => format!("EXIT {}", self.sample.exit_code),
            Some(c) if c == self.expected => "ok".to_string(),
            Some((r, c)) => format!("WRONG: {r} ran, {c} cached; expected {}, {}", self.expected.0, self.expected.1),
            None => "WRONG: no summary line".to_string(),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "shape": self.shape.name(),
            "n": self.n,
            "phase": self.phase.name(),
            "wall_s": self.sample.wall_s,
            "drover_cpu_s": self.sample.drover_cpu_s,
            "child_cpu_s": self.sample.child_cpu_s,
            "peak_rss_mib": self.sample.peak_rss_kib as f64 / 1024.0,
            "exit_code": self.sample.exit_code,
            "timed_out": self.sample.timed_out,
            "ran": self.counts.map(|c| c.0),
            "cached": self.counts.map(|c| c.1),
            "expected_ran": self.expected.0,
            "expected_cached": self.expected.1,
            "ok": self.ok(),
            "repeats": self.repeats,
        })
    }
}

/// "12 stages: 3 ran, 9 cached (1.2s)" from `run`'s stderr, or "3 to run, 9 cached" from
/// `plan`'s stdout, as (ran, cached).
fn parse_counts(text: &str) -> Option<(usize, usize)> {
    text.lines().rev().find_map(|line| {
        let line = line.trim();
        let rest = line.split_once(" stages: ").or_else(|| line.split_once(" stage: ")).map_or(line, |(_, r)| r);
        let (ran, rest) = rest.split_once(" ran, ").or_else(|| rest.split_once(" to run, "))?;
        let cached = rest.split_once(" cached")?.0;
        Some((ran.parse().ok()?, cached.parse().ok()?))
    })
}

/// Runs `args` `repeats` times and keeps the run with the median drover CPU: no-op reruns and
/// plans are short, and this machine is shared. A run that takes over 10 s, fails or times out
/// is not repeated; noise matters little there.
fn measure_median(dir: &Path, args: &[&str], repeats: usize) -> Sample {
    let mut samples = vec![measure(dir, args)];
    let first = &samples[0];
    if first.wall_s < 10.0 && first.exit_code == 0 {
        samples.extend((1..repeats).map(|_| measure(dir, args)));
    }
    samples.sort_by(|a, b| a.drover_cpu_s.total_cmp(&b.drover_cpu_s));
    samples.swap_remove(samples.len() / 2)
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    let value = std::env::var(name).unwrap_or_else(|_| default.to_string());
    value.split(',').map(str::trim).filter(|s| !s.is_empty() && *s != "none").map(String::from).collect()
}

fn print_row(row: &Row) {
    let s = &row.sample;
    println!(
        "{:<8} {:>7}  {:<17} {:>9.3} {:>10.3} {:>9.3} {:>8.1}  {}",
        row.shape.name(),
        row.n,
        row.phase.name(),
        s.wall_s,
        s.drover_cpu_s,
        s.child_cpu_s,
        s.peak_rss_kib as f64 / 1024.0,
        row.check()
    );
    if !row.ok() {
        let tail: Vec<&str> = s.stderr.lines().rev().take(6).collect();
        for line in tail.iter().rev() {
            println!("    | {line}");
        }
    }
}

fn header() {
    println!(
        "{:<8} {:>7}  {:<17} {:>9} {:>10} {:>9} {:>8}  check",
        "shape", "N", "phase", "wall s", "drover CPU", "child CPU", "RSS MiB"
    );
}

/// Measures the four phases of one (shape, N) in a fresh directory, which it returns.
fn bench_shape(shape: Shape, n: usize, repeats: usize, jobs: &[String], rows: &mut Vec<Row>) -> TempDir {
    let tmp = tempfile::Builder::new().prefix("drover-bench-").tempdir().unwrap();
    let file = write_pipeline(tmp.path(), shape, n);
    let file = file.to_str().unwrap();
    let run = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into(), file.into()];
        a.extend(jobs.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut record = |phase: Phase, args: Vec<String>, expected: (usize, usize), repeats: usize| -> bool {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sample = measure_median(tmp.path(), &args, repeats);
        let counts = parse_counts(if phase == Phase::Plan { &sample.stdout } else { &sample.stderr });
        let row = Row { shape, n, phase, sample, counts, expected, repeats };
        print_row(&row);
        let ok = row.sample.exit_code == 0;
        rows.push(row);
        ok
    };
    let skip = |phase: Phase| {
        println!("    ({} failed: the later phases of {} N={n} are skipped)", phase.name(), shape.name());
    };
    let w = width(n);
    let set = format!("p{:0w$}=0", Shape::mid(n));
    let reruns = shape.incremental_reruns(n);
    let phases = [
        (Phase::Cold, run(&[]), (n, 0), 1),
        (Phase::Noop, run(&[]), (0, n), repeats),
        (Phase::Plan, vec!["plan".into(), file.into()], (0, n), repeats),
        (Phase::Incremental, run(&["--set", &set]), (reruns, n - reruns), 1),
    ];
    for (phase, args, expected, repeats) in phases {
        if !record(phase, args, expected, repeats) {
            skip(phase);
            break;
        }
    }
    tmp
}

/// Removes the pipelines' directories, or with DROVER_BENCH_KEEP=1 keeps them (pipeline, store
/// and drover's output of the last phase) for a closer look. Done only at the end: removing
/// thousands of files just before a cold run makes ext4 slower to allocate its inodes
/// (`recently_deleted`), which would be charged to drover.
fn finish(dirs: Vec<TempDir>) {
    for tmp in dirs {
        if std::env::var("DROVER_BENCH_KEEP").is_ok_and(|v| v == "1") {
            println!("kept {}", tmp.keep().display());
        }
    }
}

/// `plan` and `validate` of a 100,000-stage chain on a store that has never run.
fn bench_plan_100k(repeats: usize, rows: &mut Vec<Row>) -> TempDir {
    let n = 100_000;
    let tmp = tempfile::Builder::new().prefix("drover-bench-").tempdir().unwrap();
    let file = write_pipeline(tmp.path(), Shape::Chain, n);
    let file = file.to_str().unwrap();
    let sample = measure_median(tmp.path(), &["plan", file], repeats);
    let counts = parse_counts(&sample.stdout);
    let row = Row { shape: Shape::Chain, n, phase: Phase::PlanCold, sample, counts, expected: (n, 0), repeats };
    print_row(&row);
    let failed = row.sample.exit_code != 0;
    rows.push(row);
    if failed {
        println!("    (plan failed: validate, which parses the same way, is skipped)");
        return tmp;
    }
    let sample = measure_median(tmp.path(), &["validate", file], repeats);
    // "FILE: ok (N stages, N after matrix expansion)"
    let counts = sample
        .stdout
        .split_once(": ok (")
        .and_then(|(_, r)| r.split_once(" stages"))
        .and_then(|(k, _)| k.parse().ok())
        .map(|k: usize| (k, 0));
    let row = Row { shape: Shape::Chain, n, phase: Phase::Validate, sample, counts, expected: (n, 0), repeats };
    print_row(&row);
    rows.push(row);
    tmp
}

/// The issue's targets, checked against what was measured (rows that were not measured are
/// not mentioned).
fn print_targets(rows: &[Row]) {
    println!("\ntargets (2-core machine):");
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    for row in rows {
        let s = &row.sample;
        let line = match (row.phase, row.n) {
            (Phase::Noop | Phase::Plan, 1000) => {
                Some(format!("{} CPU {:.3} s vs 0.050 s", verdict(s.drover_cpu_s < 0.05), s.drover_cpu_s))
            }
            (Phase::Noop | Phase::Plan, 10_000) => {
                Some(format!("{} CPU {:.3} s vs 0.5 s", verdict(s.drover_cpu_s < 0.5), s.drover_cpu_s))
            }
            (Phase::Cold, 1000) => Some(format!(
                "{} drover's own CPU {:.3} s vs 5 s (children {:.3} s)",
                verdict(s.drover_cpu_s < 5.0),
                s.drover_cpu_s,
                s.child_cpu_s
            )),
            (Phase::PlanCold, 100_000) => Some(format!(
                "{} wall {:.2} s vs 5 s; {} RSS {:.0} MiB vs 1024 MiB",
                verdict(s.wall_s < 5.0),
                s.wall_s,
                verdict(s.peak_rss_kib < 1024 * 1024),
                s.peak_rss_kib as f64 / 1024.0
            )),
            _ => None,
        };
        if let Some(line) = line {
            println!("  {:<8} {:>7}  {:<17} {line}", row.shape.name(), row.n, row.phase.name());
        }
    }
}

/// A command's trimmed stdout, for the results' metadata.
fn capture(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).current_dir(MANIFEST_DIR).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The issue's example, which `generate` must reproduce for the first two stages of a chain.
const EXAMPLE: &str = r#"pipeline: bench
params: { p0001: 1, p0002: 2 }
stages:
  s0001:
    op: command
    with: { run: "echo ${params.p0001} > ${out.out}" }
    out: { out: blob }
  s0002:
    op: command
    in: { prev: s0001 }
    deps: [scripts/step.sh]
    with: { run: "cat ${in.prev} > ${out.out} && echo ${params.p0002} >> ${out.out}" }
    out: { out: blob }
"#;

fn main() {
    assert_eq!(generate(Shape::Chain, 2), EXAMPLE, "the generated stages must have the issue's shape");
    // `cargo bench` passes `--bench`. Anything else (`cargo test --all-targets` builds and runs
    // benches too, with a debug drover) gets a quick end-to-end check of every shape instead of
    // minutes of timing, and fails if drover reports the wrong stage counts.
    if !std::env::args().any(|a| a == "--bench") {
        smoke();
        return;
    }
    let shapes: Vec<Shape> = env_list("DROVER_BENCH_SHAPES", "chain,wide,layered")
        .iter()
        .map(|s| Shape::parse(s).unwrap_or_else(|| panic!("DROVER_BENCH_SHAPES: unknown shape `{s}`")))
        .collect();
    let sizes: Vec<usize> = env_list("DROVER_BENCH_SIZES", "100,1000,10000")
        .iter()
        .map(|s| s.parse().unwrap_or_else(|_| panic!("DROVER_BENCH_SIZES: `{s}` is not a number")))
        .collect();
    let repeats: usize = std::env::var("DROVER_BENCH_REPEAT").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let plan_100k = std::env::var("DROVER_BENCH_PLAN_100K").is_ok_and(|v| v == "1");
    // drover's default -j is max(2, cores); DROVER_BENCH_JOBS pins it.
    let jobs: Vec<String> = std::env::var("DROVER_BENCH_JOBS").map(|j| vec!["-j".into(), j]).unwrap_or_default();
    for &n in &sizes {
        assert!(n >= 2 * LAYER_WIDTH && n % LAYER_WIDTH == 0, "sizes must be multiples of 10, at least 20: {n}");
    }

    println!("drover: {DROVER}");
    println!(
        "cold runs spawn one `sh` per stage: at 10,000 stages a cold run takes minutes on 2 cores.\n\
         no-op and plan: median of {repeats} by drover CPU. drover CPU = drover's own threads; \
         child CPU = the shells it ran.\n"
    );
    header();
    let mut rows = Vec::new();
    let mut dirs = Vec::new();
    for &n in &sizes {
        for &shape in &shapes {
            dirs.push(bench_shape(shape, n, repeats, &jobs, &mut rows));
        }
    }
    if plan_100k {
        dirs.push(bench_plan_100k(repeats, &mut rows));
    }
    print_targets(&rows);

    let results = json!({
        "date": capture("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": capture("git", &["rev-parse", "HEAD"]),
        "worktree_dirty": capture("git", &["status", "--porcelain"]).map(|s| !s.is_empty()),
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "kernel": capture("uname", &["-r"]),
        "drover": DROVER,
        "jobs": jobs.get(1),
        "repeats": repeats,
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    let dir = Path::new(MANIFEST_DIR).join("benches/results");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipelines.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap() + "\n").unwrap();
    println!("\nwrote {}", path.display());
    finish(dirs);
    if rows.iter().any(|r| !r.ok()) {
        println!("some phases did not report the expected stage counts (marked above)");
    }
}

/// Every shape at N=20, once, checking stage counts only; writes no results.
fn smoke() {
    header();
    let mut rows = Vec::new();
    let mut dirs = Vec::new();
    for shape in [Shape::Chain, Shape::Wide, Shape::Layered] {
        dirs.push(bench_shape(shape, 2 * LAYER_WIDTH, 1, &[], &mut rows));
    }
    finish(dirs);
    let bad = rows.iter().filter(|r| !r.ok()).count();
    assert!(bad == 0 && rows.len() == 12, "{bad} of {} phases went wrong (see above)", rows.len());
    println!("smoke check passed; `cargo bench --bench pipelines` measures");
}
