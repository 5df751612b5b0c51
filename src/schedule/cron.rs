//! Calendar expressions: cron's five fields, checked as Debian's cron reads them, when they
//! next fire in a time zone, and the same calendar as systemd's `OnCalendar=`.
//!
//! Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of
//! week (0-7 or sun-sat; 0 and 7 are Sunday). Each is `*`, a value, a range `a-b`, a list
//! `a,b-c`, with an optional step `/n` (`*/15`, `1-30/5`, `5/10` = `5-59/10`). `@hourly`,
//! `@daily` (`@midnight`), `@weekly`, `@monthly` and `@yearly` (`@annually`) stand for their
//! five fields. As in Vixie cron, when the day-of-month or the day-of-week field starts with
//! `*`, a day must match both; otherwise either one.
//!
//! Times are computed with the C library's `localtime_r` and `mktime` in the zone named by `TZ`
//! (the zone database the scheduler itself uses). A time that does not exist (skipped by a
//! daylight-saving change) does not fire.

use std::ffi::CStr;

/// One field's allowed values and names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[] },
    Field { name: "hour", min: 0, max: 23, names: &[] },
    Field { name: "day of month", min: 1, max: 31, names: &[] },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    },
    Field { name: "day of week", min: 0, max: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"] },
];

/// A checked calendar expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    /// As written.
    pub text: String,
    /// Bit `v` set when value `v` matches (minute, hour, day of month, month, day of week 0-6).
    sets: [u64; 5],
    /// The day-of-month / day-of-week field starts with `*` (Vixie cron's DOM_STAR, DOW_STAR).
    dom_star: bool,
    dow_star: bool,
}

/// The help every malformed expression gets.
pub const HELP: &str = "five fields, minute hour day-of-month month day-of-week: `0 2 * * *` (02:00 every day), \
                        `*/15 * * * *`, `30 6 * * mon-fri`; or @hourly, @daily, @weekly, @monthly, @yearly";

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, String> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            "@reboot" => return Err("`@reboot` is not a time of day: a schedule needs a calendar".into()),
            t if t.starts_with('@') => return Err(format!("unknown shorthand `{t}`")),
            t => t,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "`{}` has {} field{}, not 5",
                text.trim(),
                parts.len(),
                if parts.len() == 1 { "" } else { "s" }
            ));
        }
        let mut sets = [0u64; 5];
        for (i, (part, field)) in parts.iter().zip(&FIELDS).enumerate() {
            sets[i] = parse_field(part, field).map_err(|e| format!("{} field `{part}`: {e}", field.name))?;
        }
        // Day of week 7 is Sunday, as 0.
        if sets[4] & (1 << 7) != 0 {
            sets[4] = (sets[4] & !(1 << 7)) | 1;
        }
        Ok(Cron {
            text: text.trim().to_string(),
            sets,
            dom_star: parts[2].starts_with('*'),
            dow_star: parts[4].starts_with('*'),
        })
    }

    fn has(&self, field: usize, v: u32) -> bool {
        self.sets[field] & (1 << v) != 0
    }

    fn values(&self, field: usize) -> Vec<u32> {
        (FIELDS[field].min..=FIELDS[field].max.min(63)).filter(|v| self.has(field, *v)).collect()
    }

    /// Whether a day fires at all (month, and day of month / day of week by cron's rule).
    fn day_matches(&self, month: u32, day: u32, weekday: u32) -> bool {
        let (dom, dow) = (self.has(2, day), self.has(4, weekday));
        self.has(3, month) && if self.dom_star || self.dow_star { dom && dow } else { dom || dow }
    }

    /// The first time strictly after `after` (Unix seconds) at which it fires, in the zone of
    /// `TZ`; `None` if it never does in the next eight years (`0 0 30 2 *`).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let start = after.div_euclid(60) * 60 + 60;
        let mut day = local(start)?;
        for _ in 0..(366 * 8) {
            let (y, m, d) = (day.year, day.month, day.day);
            if self.day_matches(m, d, day.weekday) {
                for h in self.values(1) {
                    for mi in self.values(0) {
                        let Some(t) = from_local(y, m, d, h, mi) else { continue };
                        // A time in a daylight-saving gap comes back as another hour: it does not exist.
                        let back = local(t)?;
                        if t >= start && back.hour == h && back.minute == mi && back.day == d {
                            return Some(t);
                        }
                    }
                }
            }
            // The next day, at noon (never in a daylight-saving change); mktime carries the
            // 32nd of a month into the next.
            day = local(from_local(y, m, d + 1, 12, 0)?)?;
        }
        None
    }

    /// The same calendar for systemd's `OnCalendar=`, one expression per line needed (two when
    /// cron's "day of month or day of week" rule applies), each in `zone`.
    pub fn on_calendar(&self, zone: &str) -> Vec<String> {
        let list = |field: usize, width: usize| -> String {
            let all = FIELDS[field].min..=FIELDS[field].max.min(if field == 4 { 6 } else { 63 });
            let values = self.values(field);
            if values.len() == all.count() {
                return "*".into();
            }
            values.iter().map(|v| format!("{v:0width$}")).collect::<Vec<_>>().join(",")
        };
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        let weekdays = || self.values(4).into_iter().map(|d| DAYS[d as usize]).collect::<Vec<_>>().join(",");
        let time = format!("{}:{}:00", list(1, 2), list(0, 2));
        let date = |day: &str| format!("*-{}-{day}", list(3, 2));
        let lines = match (self.dom_star, self.dow_star) {
            // cron: a day matches both fields; systemd ANDs its weekday and its date too.
            (true, true) | (true, false) | (false, true) => {
                let dow_all = self.values(4).len() == 7;
                let date = date(&list(2, 2));
                match dow_all {
                    true => vec![format!("{date} {time}")],
                    false => vec![format!("{} {date} {time}", weekdays())],
                }
            }
            // cron: either field; systemd: one line for each.
            (false, false) => {
                vec![format!("{} {} {time}", weekdays(), date("*")), format!("{} {time}", date(&list(2, 2)))]
            }
        };
        lines.into_iter().map(|l| format!("{l} {zone}")).collect()
    }
}

fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut set = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("step `{s}` is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let value = |s: &str| -> Result<u32, String> {
            let v = match s.parse::<u32>() {
                Ok(v) => v,
                Err(_) => {
                    let lower = s.to_ascii_lowercase();
                    let index =
                        field.names.iter().position(|n| *n == lower).ok_or_else(|| match field.names.is_empty() {
                            true => format!("`{s}` is not a number"),
                            false => format!("`{s}` is not a number or a name ({})", field.names.join(", ")),
                        })?;
                    index as u32 + field.min
                }
            };
            match (field.min..=field.max).contains(&v) {
                true => Ok(v),
                false => Err(format!("{v} is outside {}-{}", field.min, field.max)),
            }
        };
        let (lo, hi) = match range {
            "*" => (field.min, field.max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `5/10` is `5-MAX/10`, as Debian's cron reads it.
                None if step.is_some() => (value(r)?, field.max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if lo > hi {
            return Err(format!("the range {lo}-{hi} runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok(set)
}

/// A moment in the local zone, broken down.
#[derive(Clone, Copy, Debug)]
pub struct Local {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub weekday: u32,
    /// The zone's abbreviation at that moment (`CET`, `UTC`).
    zone: [u8; 16],
}

impl Local {
    pub fn zone(&self) -> &str {
        let end = self.zone.iter().position(|&b| b == 0).unwrap_or(self.zone.len());
        std::str::from_utf8(&self.zone[..end]).unwrap_or("")
    }

    /// `Mon 2026-11-30 02:00:00 UTC`, as `systemd-analyze calendar` writes it.
    pub fn display(&self) -> String {
        const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        format!(
            "{} {:04}-{:02}-{:02} {:02}:{:02}:{:02} {}",
            DAYS[self.weekday as usize % 7],
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            self.zone()
        )
    }

    /// `2026-11-30T02:00:00`, as `sbatch --begin` reads a local time.
    pub fn slurm(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

unsafe extern "C" {
    /// POSIX `tzset`: reads `TZ` again (the libc crate declares it for Windows only).
    fn tzset();
}

/// Makes `zone` the process's local zone for what follows. Only the `schedule` command calls
/// it, before any thread exists.
pub fn use_zone(zone: &str) {
    // SAFETY: called on the main thread before drover starts any other (the `schedule`
    // commands run no runtime and spawn no threads), so nothing reads the environment meanwhile.
    unsafe {
        std::env::set_var("TZ", zone);
        tzset();
    }
}

/// Unix seconds as local time in the zone of `TZ`.
pub fn local(t: i64) -> Option<Local> {
    let time = t as libc::time_t;
    // SAFETY: `tm` is plain data, zeroed is a valid value; localtime_r writes into it only.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        return None;
    }
    let mut zone = [0u8; 16];
    if !tm.tm_zone.is_null() {
        // SAFETY: glibc points tm_zone at a NUL-terminated abbreviation that lives as long as
        // the zone data (the process).
        let name = unsafe { CStr::from_ptr(tm.tm_zone) }.to_bytes();
        let n = name.len().min(zone.len() - 1);
        zone[..n].copy_from_slice(&name[..n]);
    }
    Some(Local {
        year: i64::from(tm.tm_year) + 1900,
        month: (tm.tm_mon + 1) as u32,
        day: tm.tm_mday as u32,
        hour: tm.tm_hour as u32,
        minute: tm.tm_min as u32,
        second: tm.tm_sec as u32,
        weekday: tm.tm_wday as u32,
        zone,
    })
}

/// A local wall-clock time in the zone of `TZ` as Unix seconds (`mktime`, daylight saving
/// decided by the zone).
fn from_local(year: i64, month: u32, day: u32, hour: u32, minute: u32) -> Option<i64> {
    // SAFETY: plain data, zeroed is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = (year - 1900) as i32;
    tm.tm_mon = month as i32 - 1;
    tm.tm_mday = day as i32;
    tm.tm_hour = hour as i32;
    tm.tm_min = minute as i32;
    tm.tm_isdst = -1;
    // SAFETY: a valid pointer to a tm we own.
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(t as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_parse_as_debian_cron_reads_them() {
        let c = Cron::parse("*/15 2,14 1-10/3 jan-MAR sun,7").unwrap();
        assert_eq!(c.values(0), [0, 15, 30, 45]);
        assert_eq!(c.values(1), [2, 14]);
        assert_eq!(c.values(2), [1, 4, 7, 10]);
        assert_eq!(c.values(3), [1, 2, 3]);
        assert_eq!(c.values(4), [0], "0 and 7 are both Sunday");
        assert_eq!(Cron::parse("5/20 * * * *").unwrap().values(0), [5, 25, 45]);
        assert_eq!(Cron::parse("@weekly").unwrap().values(4), [0]);
        let stars = Cron::parse("0 0 */2 * mon").unwrap();
        assert!(stars.dom_star && !stars.dow_star, "`*/2` counts as a star, as in Vixie cron");
    }

    #[test]
    fn malformed_expressions_say_which_field_and_why() {
        let err = |t: &str| Cron::parse(t).unwrap_err();
        assert_eq!(err("0 2 * *"), "`0 2 * *` has 4 fields, not 5");
        assert_eq!(err("60 2 * * *"), "minute field `60`: 60 is outside 0-59");
        assert_eq!(
            err("0 2 * foo *"),
            "month field `foo`: `foo` is not a number or a name (jan, feb, mar, apr, may, jun, jul, aug, sep, oct, nov, dec)"
        );
        assert_eq!(err("0 5-2 * * *"), "hour field `5-2`: the range 5-2 runs backwards");
        assert_eq!(err("*/0 * * * *"), "minute field `*/0`: a step of 0");
        assert_eq!(err("0 0 0 * *"), "day of month field `0`: 0 is outside 1-31");
        assert_eq!(err("@reboot"), "`@reboot` is not a time of day: a schedule needs a calendar");
        assert_eq!(err("@nightly"), "unknown shorthand `@nightly`");
    }

    #[test]
    fn on_calendar_keeps_crons_day_rule() {
        let one = |t: &str| Cron::parse(t).unwrap().on_calendar("UTC");
        assert_eq!(one("0 2 * * *"), ["*-*-* 02:00:00 UTC"]);
        assert_eq!(one("30 6 * * mon-fri"), ["Mon,Tue,Wed,Thu,Fri *-*-* 06:30:00 UTC"]);
        assert_eq!(one("*/20 1,13 * jan,jul *"), ["*-01,07-* 01,13:00,20,40:00 UTC"]);
        assert_eq!(one("* * * * *"), ["*-*-* *:*:00 UTC"]);
        // Both day fields restricted: either one fires.
        assert_eq!(one("0 0 1,15 * sun"), ["Sun *-*-* 00:00:00 UTC", "*-*-01,15 00:00:00 UTC"]);
        // `*/2` counts as a star: both must hold, as systemd's single line says.
        assert_eq!(one("0 0 */10 * 1"), ["Mon *-*-01,11,21,31 00:00:00 UTC"]);
    }
}
