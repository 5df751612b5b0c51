//! Prints a run's progress to stderr: on a terminal, a progress bar over the stages with one
//! line per stage that ran, failed or retried; otherwise the same lines, plain. `-v` adds a
//! line per cached stage. The compute device of numeric ops is announced once, with the reason
//! it was chosen.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_cache::StageOutcome;
use drover_engine::Progress;
use drover_engine::exec::{Event, Reporter, humanize};
use indicatif::{ProgressBar, ProgressStyle};

pub struct TermReporter {
    verbose: bool,
    shared: Arc<Shared>,
    /// The last compute device announced, so that it is said once, not per stage.
    device: Mutex<Option<String>>,
}

/// What the reporter and every stage's progress sink share.
struct Shared {
    /// `None` when stderr is not a terminal.
    bar: Option<ProgressBar>,
    /// Stages running now, with their own progress text.
    running: Mutex<BTreeMap<String, String>>,
}

impl TermReporter {
    pub fn new(verbose: bool) -> TermReporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} stages  {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        TermReporter {
            verbose,
            shared: Arc::new(Shared { bar, running: Mutex::new(BTreeMap::new()) }),
            device: Mutex::new(None),
        }
    }

    fn line(&self, text: String) {
        self.shared.line(text)
    }

    /// Clears the bar before the summary is printed.
    pub fn finish(&self) {
        if let Some(bar) = &self.shared.bar {
            bar.finish_and_clear();
        }
    }
}

impl Shared {
    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let text: Vec<String> = running
                .iter()
                .take(4)
                .map(|(s, p)| if p.is_empty() { s.clone() } else { format!("{s} {p}") })
                .collect();
            let more = if running.len() > 4 { format!(" +{}", running.len() - 4) } else { String::new() };
            bar.set_message(format!("{}{more}", text.join(", ")));
        }
    }
}

impl Reporter for TermReporter {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Started { stages, .. } => {
                if let Some(bar) = &self.shared.bar {
                    bar.set_length(stages as u64);
                }
            }
            Event::StageStarted { stage, attempt } => {
                self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).insert(stage.to_string(), String::new());
                if attempt > 1 {
                    self.line(format!("  retry   {stage} (attempt {attempt})"));
                }
                self.shared.refresh();
            }
            Event::StageRetry { stage, attempt, error, delay } => self.line(format!(
                "  failed  {stage} (attempt {attempt}): {}; retrying in {}",
                error.lines().next().unwrap_or(error),
                humanize(delay)
            )),
            Event::StageFinished { stage, outcome, duration, error, log, notes } => {
                self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).remove(stage);
                if let Some(device) = notes.get("device") {
                    let mut said = self.device.lock().unwrap_or_else(|p| p.into_inner());
                    if said.as_deref() != Some(device) {
                        self.line(format!("  device  {device}"));
                        *said = Some(device.to_string());
                    }
                }
                if let Some(bar) = &self.shared.bar {
                    bar.inc(1);
                }
                match outcome {
                    StageOutcome::Cached if notes.contains_key("remote") => {
                        self.line(format!("  cached  {stage} (remote)"))
                    }
                    StageOutcome::Cached if self.verbose => self.line(format!("  cached  {stage}")),
                    StageOutcome::Ran => self.line(format!("  ran     {stage} ({})", humanize(duration))),
                    StageOutcome::Failed => {
                        let log = log.map(|l| format!("\n          log: {}", l.display())).unwrap_or_default();
                        self.line(format!(
                            "  FAILED  {stage} ({}): {}{log}",
                            humanize(duration),
                            error.unwrap_or("failed")
                        ))
                    }
                    _ => {}
                }
                self.shared.refresh();
            }
        }
    }

    fn progress(&self, stage: &str) -> Arc<dyn Progress> {
        Arc::new(StageProgress {
            stage: stage.to_string(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            note: Mutex::new(String::new()),
            logged: Mutex::new(None),
            shared: self.shared.clone(),
        })
    }
}

/// An op's progress, shown beside its stage name on the bar.
struct StageProgress {
    stage: String,
    total: AtomicU64,
    done: AtomicU64,
    /// The op's latest message (requests in flight, tokens/s, ...), shown after the count.
    note: Mutex<String>,
    /// Without a terminal: when the last progress line was printed (one per `LOG_EVERY`).
    logged: Mutex<Option<std::time::Instant>>,
    shared: Arc<Shared>,
}

/// How often a long stage says how far it is when stderr is not a terminal (a log file, a
/// scheduler's capture).
const LOG_EVERY: Duration = Duration::from_secs(30);

impl StageProgress {
    fn show(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let mut text = match (done, total) {
            (0, 0) => String::new(),
            (d, 0) => d.to_string(),
            (d, t) => format!("{d}/{t}"),
        };
        let note = self.note.lock().unwrap_or_else(|p| p.into_inner());
        if !note.is_empty() {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(&note);
        }
        drop(note);
        if self.shared.bar.is_none() && !text.is_empty() {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            match *logged {
                None => *logged = Some(now),
                Some(last) if now - last >= LOG_EVERY => {
                    *logged = Some(now);
                    eprintln!("  ...     {} {text}", self.stage);
                }
                Some(_) => {}
            }
        }
        self.shared.running.lock().unwrap_or_else(|p| p.into_inner()).insert(self.stage.clone(), text);
        self.shared.refresh();
    }
}

impl Progress for StageProgress {
    fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.show();
    }

    fn message(&self, msg: &str) {
        *self.note.lock().unwrap_or_else(|p| p.into_inner()) = msg.to_string();
        self.show();
    }
}

/// "12 stages: 3 ran, 9 cached (1.2s)"; with stages fetched from the remote, "9 cached (2 remote)".
pub fn summary(ran: usize, cached: usize, remote: usize, failed: usize, skipped: usize, elapsed: Duration) -> String {
    let total = ran + cached + failed + skipped;
    let cached = match remote {
        0 => format!("{cached} cached"),
        n => format!("{cached} cached ({n} remote)"),
    };
    let mut parts = vec![format!("{ran} ran"), cached];
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if skipped > 0 {
        parts.push(format!("{skipped} skipped"));
    }
    format!("{total} stage{}: {} ({})", if total == 1 { "" } else { "s" }, parts.join(", "), humanize(elapsed))
}
