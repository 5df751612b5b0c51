//! `drover schedule`: entries for cron, systemd and Slurm. cron runs for real (Debian's `cron`
//! in the foreground, an entry a minute in the crontab of the user running the test, whose own
//! lines are kept and whose crontab is restored), systemd's units pass `systemd-analyze
//! verify`, calendars agree with `systemd-analyze calendar`, and the Slurm script is checked by
//! `bash -n` here, and installed, run and removed on the test Slurm in tests/slurm.rs.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{HELD, Output, Project, wait_for};

const QUICK: &str = r#"
pipeline: quick
params: { acc: 0.75 }
stages:
  m:
    op: command
    with: { run: "printf 'accuracy\n${params.acc}\n' > ${out.out}" }
    out: { out: { type: table, format: csv } }
    metrics: [accuracy]
"#;

/// Runs drover with the schedules' registry, logs and systemd units under the project.
fn drover(p: &Project, args: &[&str]) -> Output {
    let out = p
        .cmd(args)
        .env("XDG_CONFIG_HOME", p.join("config"))
        .env("XDG_STATE_HOME", p.join("state"))
        .output()
        .expect("run drover");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// The fire times `systemd-analyze calendar` gives for these `OnCalendar=` expressions, merged.
fn systemd_fires(calendars: &[&str], zone: &str, from: i64, count: usize) -> Vec<String> {
    let mut args = vec!["calendar".to_string(), format!("--iterations={count}"), format!("--base-time=@{from}")];
    args.extend(calendars.iter().map(|c| c.to_string()));
    let out = Command::new("systemd-analyze").args(&args).env("TZ", zone).output().expect("systemd-analyze");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut fires: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("Next elapse: ")
                .or_else(|| l.strip_prefix("Iter. #").and_then(|r| r.split_once(": ").map(|(_, t)| t)))
        })
        .map(str::to_string)
        .collect();
    // By date and time (each expression's list is in order; one zone, so they compare).
    fires.sort_by(|a, b| a[4..].cmp(&b[4..]));
    fires.dedup();
    fires.truncate(count);
    fires
}

/// The units `schedule add --backend systemd --print` writes, by file name.
fn printed_units(text: &str) -> Vec<(String, String)> {
    text.split("==> ")
        .skip(1)
        .map(|chunk| {
            let (head, body) = chunk.split_once(" <==\n").unwrap();
            (Path::new(head).file_name().unwrap().to_string_lossy().into_owned(), body.to_string())
        })
        .collect()
}

#[test]
fn calendars_fire_when_systemd_says_they_do() {
    let p = Project::new();
    p.write("drover.yaml", QUICK);
    // 2027-03-27 00:00 UTC: the night before Europe/Paris moves to summer time (02:30 does not
    // exist on 2027-03-28) and New York is already on it.
    let from = 1_806_105_600;
    for (expr, zone) in [
        ("0 2 * * *", "UTC"),
        ("30 2 * * *", "Europe/Paris"),
        ("*/20 1,13 * jan,apr,jul *", "UTC"),
        ("0 0 1,15 * sun", "America/New_York"),
        ("0 0 */10 * mon", "UTC"),
        ("30 6 * * mon-fri", "Asia/Kolkata"),
        ("@weekly", "UTC"),
        ("15 10 29 2 *", "UTC"),
    ] {
        let printed =
            drover(&p, &["schedule", "add", "n", "--cron", expr, "--backend", "systemd", "--tz", zone, "--print"]);
        printed.expect_code(0);
        let units = printed_units(&printed.stdout);
        let calendars: Vec<&str> = units[1].1.lines().filter_map(|l| l.strip_prefix("OnCalendar=")).collect();
        let expected = systemd_fires(&calendars, zone, from, 6);
        let ours = drover(
            &p,
            &["schedule", "next", "--cron", expr, "--tz", zone, "--count", "6", "--from", &format!("@{from}")],
        );
        ours.expect_code(0);
        assert_eq!(ours.stdout.lines().collect::<Vec<_>>(), expected, "`{expr}` in {zone} ({calendars:?})");
    }
    // The leap day: 2028, then 2032.
    let leap = drover(
        &p,
        &["schedule", "next", "--cron", "15 10 29 2 *", "--tz", "UTC", "--count", "2", "--from", "@1806105600"],
    );
    assert_eq!(leap.stdout, "Tue 2028-02-29 10:15:00 UTC\nSun 2032-02-29 10:15:00 UTC\n");
    let slurm = drover(
        &p,
        &[
            "schedule",
            "next",
            "--cron",
            "30 2 * * *",
            "--tz",
            "Europe/Paris",
            "--format",
            "slurm",
            "--from",
            "@1806105600",
        ],
    );
    assert_eq!(slurm.stdout, "2027-03-27T02:30:00\n");
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let p = Project::new();
    p.write("drover.yaml", QUICK);
    p.write("secrets.env", "HF_TOKEN=hf_not_in_any_entry\n");
    std::fs::set_permissions(p.join("secrets.env"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let printed = drover(
        &p,
        &[
            "schedule",
            "add",
            "nightly-fit",
            "--cron",
            "0 0 1,15 * sun",
            "--backend",
            "systemd",
            "--tz",
            "Europe/Paris",
            "--env-file",
            "secrets.env",
            "--print",
            "--",
            "--if-changed",
            "--set",
            "acc=0.5",
        ],
    );
    printed.expect_code(0);
    // The next firing: a Sunday, or the 1st or 15th, at midnight in Paris.
    let next = printed.stderr.strip_prefix("next: ").unwrap();
    assert!(next.starts_with("Sun ") || next[12..14] == *"01" || next[12..14] == *"15", "{next}");
    assert!(next.ends_with(" 00:00:00 CET\n") || next.ends_with(" 00:00:00 CEST\n"), "{next}");
    let units = printed_units(&printed.stdout);
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["drover-nightly-fit.service", "drover-nightly-fit.timer"]);
    let (service, timer) = (&units[0].1, &units[1].1);
    let dir = std::fs::canonicalize(p.path()).unwrap();
    let drover_bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_drover")).unwrap();
    let expect_line =
        |text: &str, line: String| assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    expect_line(service, format!("WorkingDirectory={}", dir.display()));
    expect_line(service, format!("EnvironmentFile={}", dir.join("secrets.env").display()));
    expect_line(
        service,
        format!(
            "ExecStart=\"{}\" \"nightly\" \"nightly-fit\" \"{}\" \"--trigger\" \"systemd\" \"--if-changed\" \"--set\" \"acc=0.5\"",
            drover_bin.display(),
            dir.join("drover.yaml").display()
        ),
    );
    expect_line(service, "SuccessExitStatus=75".into());
    expect_line(
        service,
        format!("StandardOutput=append:{}", dir.join("state/drover/schedules/nightly-fit.log").display()),
    );
    assert!(service.lines().any(|l| l.starts_with("Environment=\"PATH=")), "{service}");
    assert!(!service.contains("hf_not_in_any_entry"), "secrets stay in their file");
    // cron's "day of month or day of week" is two calendars for systemd.
    expect_line(timer, "OnCalendar=Sun *-*-* 00:00:00 Europe/Paris".into());
    expect_line(timer, "OnCalendar=*-*-01,15 00:00:00 Europe/Paris".into());
    expect_line(timer, "Persistent=true".into());
    expect_line(timer, "Unit=drover-nightly-fit.service".into());

    let units_dir = p.join("units");
    std::fs::create_dir_all(&units_dir).unwrap();
    for (name, text) in &units {
        std::fs::write(units_dir.join(name), text).unwrap();
    }
    let paths: Vec<String> = units.iter().map(|(n, _)| units_dir.join(n).display().to_string()).collect();
    let verify = run("systemd-analyze", &["verify", &paths[0], &paths[1]]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    assert_eq!(String::from_utf8_lossy(&verify.stderr), "", "systemd-analyze verify says nothing about them");

    // The check bites: a unit systemd cannot read is reported.
    std::fs::write(units_dir.join(&units[0].0), service.replace("Type=oneshot", "Type=oneshoot")).unwrap();
    let verify = run("systemd-analyze", &["verify", &paths[0], &paths[1]]);
    assert!(String::from_utf8_lossy(&verify.stderr).contains("Failed to parse service type, ignoring: oneshoot"));
}

/// A `systemctl` of the test's own, first on PATH, that notes its arguments and succeeds, or
/// fails as it does where no systemd user manager runs (as on these machines).
fn fake_systemctl(p: &Project, fail: bool) -> String {
    let bin = p.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let body = match fail {
        false => format!("#!/bin/sh\necho \"$@\" >> {}\n", p.join("systemctl.calls").display()),
        true => "#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n".to_string(),
    };
    std::fs::write(bin.join("systemctl"), body).unwrap();
    std::fs::set_permissions(bin.join("systemctl"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

#[test]
fn systemd_schedules_install_list_and_remove() {
    let p = Project::new();
    p.write("drover.yaml", QUICK);
    let path = fake_systemctl(&p, false);
    let with_path = |args: &[&str]| {
        let out = p
            .cmd(args)
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env("XDG_STATE_HOME", p.join("state"))
            .env("PATH", &path)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = with_path(&["schedule", "add", "fit", "--cron", "0 2 * * *", "--backend", "systemd"]);
    assert_eq!(code, 0, "{stderr}");
    let units = p.join("config/systemd/user");
    assert!(units.join("drover-fit.service").is_file() && units.join("drover-fit.timer").is_file());
    assert!(stdout.contains("drover-fit.timer is enabled"), "{stdout}");
    assert_eq!(p.read("systemctl.calls"), "--user daemon-reload\n--user enable --now drover-fit.timer\n");

    let (_, listed, _) = with_path(&["schedule", "list"]);
    let rows: Vec<Vec<&str>> = listed.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["name", "backend", "when", "next", "pipeline"]);
    assert_eq!(rows[1][..7], ["fit", "systemd", "0", "2", "*", "*", "*"]);
    assert_eq!(*rows[1].last().unwrap(), std::fs::canonicalize(p.join("drover.yaml")).unwrap().to_str().unwrap());

    let (code, _, stderr) = with_path(&["schedule", "add", "fit", "--cron", "0 3 * * *", "--backend", "systemd"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("schedule `fit` exists"), "{stderr}");

    let (code, stdout, _) = with_path(&["schedule", "remove", "fit"]);
    assert_eq!(code, 0);
    assert_eq!(stdout, "removed schedule `fit` (systemd): drover-fit.timer is stopped and its units removed\n");
    assert!(!units.join("drover-fit.service").exists() && !units.join("drover-fit.timer").exists());
    assert_eq!(
        p.read("systemctl.calls"),
        "--user daemon-reload\n--user enable --now drover-fit.timer\n--user disable --now drover-fit.timer\n--user daemon-reload\n"
    );
    let (code, _, stderr) = with_path(&["schedule", "remove", "fit"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no schedule `fit`"), "{stderr}");

    // Where no systemd user manager runs, the units are written and the failure says what to do.
    let path = fake_systemctl(&p, true);
    let out = p
        .cmd(&["schedule", "add", "fit", "--cron", "0 2 * * *", "--backend", "systemd"])
        .env("XDG_CONFIG_HOME", p.join("config"))
        .env("XDG_STATE_HOME", p.join("state"))
        .env("PATH", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("the units are written"), "{stderr}");
    assert!(stderr.contains("Failed to connect to bus: No medium found"), "{stderr}");
    assert!(
        stderr.contains("systemctl --user daemon-reload && systemctl --user enable --now drover-fit.timer"),
        "{stderr}"
    );
    // ... and `remove` cleans up after it.
    drover(&p, &["schedule", "remove", "fit"]).expect_code(0);
    assert!(!units.join("drover-fit.timer").exists());
}

#[test]
fn schedule_add_checks_everything_before_installing_anything() {
    let p = Project::new();
    p.write("drover.yaml", QUICK);
    p.write("broken.yaml", "stages:\n  a: { op: nosuchop }\n");
    let bad = |args: &[&str], needle: &str| {
        let out = drover(&p, args);
        out.expect_code(2);
        assert!(out.unwrapped().contains(needle), "{needle:?} in\n{}", out.stderr);
    };
    bad(&["schedule", "add", "n", "--cron", "0 2 * *", "--print"], "--cron: `0 2 * *` has 4 fields, not 5");
    bad(&["schedule", "add", "n", "--cron", "0 24 * * *", "--print"], "--cron: hour field `24`: 24 is outside 0-23");
    bad(&["schedule", "add", "n", "--cron", "@reboot", "--print"], "`@reboot` is not a time of day");
    bad(
        &["schedule", "add", "n", "--cron", "0 2 * * *", "--tz", "Mars/Olympus", "--print"],
        "unknown time zone `Mars/Olympus`",
    );
    let system = {
        let out = drover(&p, &["schedule", "add", "n", "--cron", "0 2 * * *", "--print"]);
        out.stdout.lines().nth(1).unwrap().split(", ").nth(1).unwrap().split(' ').next().unwrap().to_string()
    };
    let other = if system == "Asia/Tokyo" { "Europe/Paris" } else { "Asia/Tokyo" };
    bad(
        &["schedule", "add", "n", "--cron", "0 2 * * *", "--tz", other, "--print"],
        &format!("--tz {other}: cron reads every entry in the system's time zone, {system}"),
    );
    bad(
        &["schedule", "add", "n", "--cron", "0 2 * * *", "missing.yaml", "--print"],
        "cannot read pipeline file missing.yaml",
    );
    bad(&["schedule", "add", "n", "--cron", "0 2 * * *", "broken.yaml", "--print"], "unknown op `nosuchop`");
    bad(
        &["schedule", "add", "n", "--cron", "0 2 * * *", "--print", "--", "--if-chnaged"],
        "the arguments after `--` are not `drover nightly`'s",
    );
    bad(&["schedule", "add", "n", "--cron", "0 2 * * *", "--print", "--", "--trigger", "cron"], "give `--trigger`");
    bad(&["schedule", "add", "n", "--cron", "0 2 * * *", "--env-file", "nope.env", "--print"], "--env-file nope.env");
    bad(&["schedule", "add", "n.1", "--cron", "0 2 * * *", "--print"], "invalid schedule name `n.1`");
    bad(&["schedule", "remove", "nope"], "no schedule `nope`");
    bad(&["nightly", "n/1"], "invalid schedule name `n/1`");
    // An env file others can read is installed, with a warning.
    p.write("open.env", "A=1\n");
    std::fs::set_permissions(p.join("open.env"), std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = drover(&p, &["schedule", "add", "n", "--cron", "0 2 * * *", "--env-file", "open.env", "--print"]);
    out.expect_code(0);
    assert!(
        out.stderr.contains("open.env holds secrets and others may read it (mode 644): chmod 600 it"),
        "{}",
        out.stderr
    );
    assert!(!p.join("config/drover/schedules").exists(), "--print installs nothing");
}

#[test]
fn the_slurm_entry_is_a_bash_script_that_queues_the_next_night_first() {
    let p = Project::new();
    p.write("drover.yaml", QUICK);
    let out = drover(
        &p,
        &["schedule", "add", "fit", "--cron", "30 2 * * *", "--backend", "slurm", "--tz", "Europe/Paris", "--print"],
    );
    out.expect_code(0);
    let script = out.stdout;
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines[0], "#!/bin/bash");
    for line in [
        "#SBATCH --job-name=drover-nightly-fit",
        "#SBATCH --dependency=singleton",
        "#SBATCH --open-mode=append",
        "export TZ='Europe/Paris'",
    ] {
        assert!(lines.contains(&line), "no {line:?} in\n{script}");
    }
    let drover_bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_drover")).unwrap();
    let next = format!(
        "next=$('{}' schedule next --cron '30 2 * * *' --tz 'Europe/Paris' --format slurm)",
        drover_bin.display()
    );
    let queue = lines.iter().position(|l| *l == next).expect("the next night is computed");
    assert!(lines[queue + 1].starts_with("sbatch --begin=\"$next\" '"), "{script}");
    assert!(lines[queue + 2].starts_with(&format!("exec '{}' 'nightly' 'fit' ", drover_bin.display())), "{script}");
    assert!(lines[queue + 2].ends_with("'--trigger' 'slurm'"), "{script}");
    let path = p.join("fit.sbatch");
    std::fs::write(&path, &script).unwrap();
    let check = run("bash", &["-n", path.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

/// The user's crontab as it was before the test, put back however the test ends.
struct CrontabGuard {
    before: Option<String>,
}

impl CrontabGuard {
    fn save() -> CrontabGuard {
        let out = run("crontab", &["-l"]);
        let before = out.status.success().then(|| String::from_utf8(out.stdout).unwrap());
        CrontabGuard { before }
    }

    fn current() -> String {
        let out = run("crontab", &["-l"]);
        if out.status.success() { String::from_utf8(out.stdout).unwrap() } else { String::new() }
    }

    fn set(text: &str) {
        let mut child = Command::new("crontab").arg("-").stdin(Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
}

impl Drop for CrontabGuard {
    fn drop(&mut self) {
        match &self.before {
            Some(text) => CrontabGuard::set(text),
            None => {
                let _ = run("crontab", &["-r"]);
            }
        }
    }
}

/// A process of the test's, stopped however the test ends.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cron_runs_the_entry_and_the_lease_skips_a_night_still_going() {
    let guard = CrontabGuard::save();
    let mine = format!("{}# a line of the user's own, which drover keeps\n", guard.before.clone().unwrap_or_default());
    CrontabGuard::set(&mine);

    let p = Project::new();
    p.write("quick.yaml", QUICK);
    p.write("held.yaml", HELD);
    // The night of `late` still going: this run holds its lease until the test lets it finish.
    let held = p.cmd(&["nightly", "late", "held.yaml"]).stderr(Stdio::null()).spawn().map(Stopped).unwrap();
    wait_for("the held run's stage to start", || p.read_opt("started"));

    let late = drover(&p, &["schedule", "add", "late", "--cron", "* * * * *", "held.yaml"]);
    late.expect_code(0);
    drover(&p, &["schedule", "add", "quick", "--cron", "* * * * *", "quick.yaml", "--", "--set", "acc=0.5"])
        .expect_code(0);
    let installed = CrontabGuard::current();
    assert!(installed.starts_with(&mine), "the user's lines come first, unchanged:\n{installed}");
    assert_eq!(installed.matches("# >>> drover schedule ").count(), 2, "{installed}");

    // Debian's cron, in the foreground, reading that crontab. (Should one run already, it is
    // the one that fires; this one then exits, as cron does when its pid file is locked.)
    let _cron =
        Command::new("cron").arg("-f").stdout(Stdio::null()).stderr(Stdio::null()).spawn().map(Stopped).unwrap();

    // cron fires on the next whole minute; give it two.
    let deadline = Instant::now() + Duration::from_secs(150);
    let log = p.join("state/drover/schedules/late.log");
    let quick_record = || -> Option<serde_json::Value> {
        let dir = std::fs::read_dir(p.join(".drover/runs")).ok()?;
        dir.flatten()
            .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.path()).ok()?).ok())
            .find(|r| r["trigger"]["schedule"] == "quick")
    };
    let (skipped, record) = loop {
        let skipped = std::fs::read_to_string(&log).ok().filter(|l| l.contains("skipped:"));
        if let (Some(s), Some(r)) = (&skipped, quick_record()) {
            break (s.clone(), r);
        }
        assert!(Instant::now() < deadline, "cron did not run both entries within 150 s; late.log: {:?}", skipped);
        std::thread::sleep(Duration::from_millis(200));
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let expected =
        format!("skipped: the previous run of schedule `late` is still going (pid {} on {host} since ", held.0.id());
    assert!(skipped.starts_with(&expected), "{skipped}");
    assert_eq!(record["trigger"], serde_json::json!({"kind": "cron", "schedule": "quick"}));
    assert_eq!(record["status"], "ok");
    assert_eq!(record["metrics"], serde_json::json!({"m.accuracy": 0.5}), "the entry passed `--set acc=0.5`");

    p.write("release", "");
    let mut held = held;
    assert!(held.0.wait().unwrap().success());

    // Removing both leaves the user's crontab exactly as it was.
    drover(&p, &["schedule", "remove", "late"]).expect_code(0);
    drover(&p, &["schedule", "remove", "quick"]).expect_code(0);
    assert_eq!(CrontabGuard::current(), mine);
    drop(guard);
}
