//! Who this process is among every process sharing a store, possibly from many machines: a
//! host tag (hostname, boot and PID namespace, hashed) and the pid with its start time.
//!
//! A pid means nothing on another machine, nor in another PID namespace of this one (two
//! containers both have a pid 1), and it is reused after a process ends. So a scratch name or a
//! lease carries the tag as well, and only a process with the same tag may judge the pid alive
//! or dead by looking at `/proc`; anything else waits for the owner to stop renewing.

use std::sync::OnceLock;

/// This process's identity, computed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Me {
    /// The machine's name, for people (messages, leases).
    pub hostname: String,
    /// 16 hex digits of blake3 over (hostname, boot id, PID namespace): equal only for
    /// processes that see the same `/proc`.
    pub tag: String,
    pub pid: u32,
    /// When this process started, in clock ticks after boot (`/proc/PID/stat`, field 22), so
    /// that a reused pid is not taken for the process that had it.
    pub start: u64,
}

/// This process.
pub fn me() -> &'static Me {
    static ME: OnceLock<Me> = OnceLock::new();
    ME.get_or_init(|| {
        let hostname = hostname();
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let pidns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
        let mut h = blake3::Hasher::new();
        for part in [hostname.as_str(), boot.trim(), pidns.as_str()] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        let tag = h.finalize().to_hex()[..16].to_string();
        let pid = std::process::id();
        Me { hostname, tag, pid, start: start_time(pid).unwrap_or(0) }
    })
}

/// The UTS namespace's host name (what `hostname` prints).
fn hostname() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => "localhost".to_string(),
    }
}

/// A process's start time (field 22 of `/proc/PID/stat`), or `None` when there is no such
/// process or it has ended (a zombie).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the
    // last `)`, which begins with field 3, the state.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether the process that called itself (`tag`, `pid`, `start`) is still running. `None`
/// when this process cannot tell, because it lives on another host or PID namespace.
pub fn alive(tag: &str, pid: u32, start: u64) -> Option<bool> {
    let me = me();
    if tag != me.tag {
        return None;
    }
    // A start of 0 is an owner that could not read its own start time: the pid alone decides.
    Some(start_time(pid).is_some_and(|s| start == 0 || s == start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not_its_owner() {
        let me = me();
        assert_eq!(me.tag.len(), 16);
        assert_eq!(alive(&me.tag, me.pid, me.start), Some(true));
        assert_eq!(alive(&me.tag, me.pid, me.start + 1), Some(false), "same pid, another start: not the owner");
        assert_eq!(alive("0123456789abcdef", me.pid, me.start), None, "another host cannot be judged");
    }
}
