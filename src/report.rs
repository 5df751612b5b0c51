//! Prints a run's progress to stderr: one line per stage that ran, failed or retried (and per
//! cached stage with `-v`), then a summary.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use drover_cache::StageOutcome;
use drover_engine::exec::{Event, Reporter, humanize};

pub struct TermReporter {
    pub verbose: bool,
    out: Mutex<std::io::Stderr>,
}

impl TermReporter {
    pub fn new(verbose: bool) -> TermReporter {
        TermReporter { verbose, out: Mutex::new(std::io::stderr()) }
    }
}

impl Reporter for TermReporter {
    fn event(&self, event: Event<'_>) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match event {
            Event::Started { .. } => Ok(()),
            Event::StageStarted { stage, attempt } if attempt > 1 => {
                writeln!(out, "  retry   {stage} (attempt {attempt})")
            }
            Event::StageStarted { .. } => Ok(()),
            Event::StageRetry { stage, attempt, error, delay } => {
                writeln!(
                    out,
                    "  failed  {stage} (attempt {attempt}): {}; retrying in {}",
                    first_line(error),
                    humanize(delay)
                )
            }
            Event::StageFinished { stage, outcome, duration, error, log } => match outcome {
                StageOutcome::Cached if !self.verbose => Ok(()),
                StageOutcome::Cached => writeln!(out, "  cached  {stage}"),
                StageOutcome::Ran => writeln!(out, "  ran     {stage} ({})", humanize(duration)),
                StageOutcome::Failed => {
                    let log = log.map(|l| format!("\n          log: {}", l.display())).unwrap_or_default();
                    writeln!(out, "  FAILED  {stage} ({}): {}{log}", humanize(duration), error.unwrap_or("failed"))
                }
                StageOutcome::Skipped | StageOutcome::Interrupted => Ok(()),
            },
        };
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// "12 stages: 3 ran, 9 cached (1.2s)".
pub fn summary(ran: usize, cached: usize, failed: usize, skipped: usize, elapsed: Duration) -> String {
    let total = ran + cached + failed + skipped;
    let mut parts = vec![format!("{ran} ran"), format!("{cached} cached")];
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if skipped > 0 {
        parts.push(format!("{skipped} skipped"));
    }
    format!("{total} stage{}: {} ({})", if total == 1 { "" } else { "s" }, parts.join(", "), humanize(elapsed))
}
