//! A child process group that dies with drover, however drover dies.
//!
//! `kill -9` of drover must not leave a stage's command running (it would go on writing into a
//! store that has moved on, or hold a GPU). `PR_SET_PDEATHSIG` reaches only the direct child,
//! and fires when the *thread* that spawned it exits, so it cannot do this. Instead each command
//! runs under a small supervisor process forked from drover:
//!
//! ```text
//! drover ──(life pipe: drover holds the only write end)──> supervisor (subreaper)
//!                                                              └─ sh -c SCRIPT (leads its own group)
//!                                                                    └─ its children ...
//! ```
//!
//! The supervisor waits for two things: the command's exit, whose wait status it writes back on
//! a status pipe before exiting, and the end of the life pipe. The kernel closes drover's end of
//! that pipe when drover dies for any reason, and drover closes it itself to stop a command (a
//! timeout, Ctrl-C); the supervisor then kills the command's whole process group, grandchildren
//! included, and collects them (it is their subreaper, so none is left a zombie). Between `fork`
//! and `exec` only async-signal-safe calls are made (drover is multi-threaded): everything the
//! children need is prepared before the fork.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;

use tokio::io::AsyncReadExt;

/// What to run.
pub struct Command {
    /// Absolute path of the program (no `PATH` lookup happens after the fork).
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The whole environment of the program.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// Where the program's stdout and stderr go (stdin is `/dev/null`).
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A running supervised command. Dropping it before [`Supervised::wait`] returns kills the
/// command's whole process group (a timeout, Ctrl-C) and waits until it is gone.
pub struct Supervised {
    /// The supervisor's pid.
    pid: libc::pid_t,
    status: Option<tokio::net::unix::pipe::Receiver>,
    /// drover's end of the life pipe; the supervisor kills the group when it closes.
    life: Option<OwnedFd>,
}

/// Descriptors the supervisor keeps, at fixed numbers (so that every other one can be closed).
const LIFE_FD: RawFd = 3;
const STATUS_FD: RawFd = 4;
const OUT_FD: RawFd = 5;
const ERR_FD: RawFd = 6;

impl Supervised {
    /// Waits for the command to exit and returns how it exited.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let mut raw = [0u8; 4];
        let mut got = 0;
        if let Some(pipe) = self.status.as_mut() {
            while got < raw.len() {
                match pipe.read(&mut raw[got..]).await? {
                    0 => break,
                    n => got += n,
                }
            }
        }
        self.status = None;
        self.life = None;
        reap(self.pid);
        if got < raw.len() {
            // The supervisor died without a word: someone killed it.
            return Ok(ExitStatus::from_raw(libc::SIGKILL));
        }
        Ok(ExitStatus::from_raw(i32::from_ne_bytes(raw)))
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.life.take().is_some() {
            // The supervisor sees its life pipe end, kills the group, collects it and exits
            // (within a second even if a process escaped the group).
            reap(self.pid);
        }
    }
}

/// Collects the supervisor's exit status.
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// `program` found in `PATH` (the lookup is done before the fork, where it may allocate).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument or variable"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// A pipe whose ends are closed on exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `cmd` under a supervisor in a new process group. Must be called inside a tokio
/// runtime (the status pipe is registered with it).
pub fn spawn(cmd: Command) -> io::Result<Supervised> {
    // Everything the children touch is allocated here, before the fork.
    let program = cstring(cmd.program.as_os_str().as_bytes())?;
    let mut argv_owned = vec![program.clone()];
    for a in &cmd.args {
        argv_owned.push(cstring(a.as_bytes())?);
    }
    let mut envp_owned = Vec::with_capacity(cmd.env.len());
    for (k, v) in &cmd.env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp_owned.push(cstring(&kv)?);
    }
    let argv: Vec<*const libc::c_char> =
        argv_owned.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const libc::c_char> =
        envp_owned.iter().map(|c| c.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let cwd = cstring(cmd.cwd.as_os_str().as_bytes())?;
    let dev_null = c"/dev/null";
    let (life_r, life_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let fds = [life_r.as_raw_fd(), status_w.as_raw_fd(), cmd.stdout.as_raw_fd(), cmd.stderr.as_raw_fd()];

    // SAFETY: fork duplicates the calling thread only. The child below calls nothing but
    // async-signal-safe functions on memory prepared above, and leaves through _exit or execve.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        // SAFETY: in the forked child; see `supervisor`.
        unsafe { supervisor(&fds, program.as_ptr(), argv.as_ptr(), envp.as_ptr(), cwd.as_ptr(), dev_null.as_ptr()) }
    }
    drop(life_r);
    drop(status_w);
    drop(cmd.stdout);
    drop(cmd.stderr);
    let mut supervised = Supervised { pid, status: None, life: Some(life_w) };
    // On an error here, dropping `supervised` stops the command.
    supervised.status = Some(tokio::net::unix::pipe::Receiver::from_owned_fd(status_r)?);
    Ok(supervised)
}

/// The supervisor, in the forked child. Never returns.
///
/// # Safety
/// Only in a child just forked by [`spawn`], with pointers from that call.
unsafe fn supervisor(
    fds: &[RawFd; 4],
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    dev_null: *const libc::c_char,
) -> ! {
    unsafe {
        // drover's signal handlers (and its ignored SIGPIPE) must not carry over: a handler
        // would write into descriptor numbers that mean something else here.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        // Away from the terminal's process group (Ctrl-C is drover's to handle), and the
        // parent of every orphan the command leaves, so that all of them are collected.
        if libc::setpgid(0, 0) < 0 || libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 {
            libc::_exit(126);
        }
        // Move the four descriptors to 3..=6 (through high numbers, so none overwrites another),
        // then close everything else: other supervisors' life pipes included.
        let mut high = [0; 4];
        for (i, &fd) in fds.iter().enumerate() {
            high[i] = libc::fcntl(fd, libc::F_DUPFD, 100);
            if high[i] < 0 {
                libc::_exit(126);
            }
        }
        for (i, &fd) in high.iter().enumerate() {
            if libc::dup2(fd, LIFE_FD + i as RawFd) < 0 {
                libc::_exit(126);
            }
        }
        close_from(ERR_FD + 1);

        let child = libc::fork();
        if child < 0 {
            libc::_exit(126);
        }
        if child == 0 {
            // The command leads its own process group: stdin from /dev/null, stdout and stderr
            // to the log.
            let null = libc::open(dev_null, libc::O_RDONLY);
            if libc::setpgid(0, 0) < 0
                || null < 0
                || libc::dup2(null, 0) < 0
                || libc::dup2(OUT_FD, 1) < 0
                || libc::dup2(ERR_FD, 2) < 0
            {
                libc::_exit(126);
            }
            close_from(3);
            if libc::chdir(cwd) < 0 {
                let msg = b"drover: cannot enter the pipeline's directory\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(126);
            }
            libc::execve(program, argv, envp);
            let msg = b"drover: cannot execute the shell\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
        // Also here, so that the group exists before any kill below (either call may win).
        libc::setpgid(child, child);
        libc::close(OUT_FD);
        libc::close(ERR_FD);
        let pidfd = libc::syscall(libc::SYS_pidfd_open, child, 0) as libc::c_int;
        loop {
            let mut polls = [
                libc::pollfd { fd: LIFE_FD, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 },
            ];
            // Without a pidfd (a kernel before 5.3), look at the child every 20 ms.
            let (count, timeout) = if pidfd >= 0 { (2, -1) } else { (1, 20) };
            let n = libc::poll(polls.as_mut_ptr(), count, timeout);
            if (n < 0 && *libc::__errno_location() != libc::EINTR) || polls[0].revents != 0 {
                // drover is gone, or wants the command stopped (nothing is ever written on the
                // life pipe): end the group and collect everything in it.
                libc::kill(-child, libc::SIGKILL);
                reap_all();
                libc::_exit(137);
            }
            let mut status = 0;
            if libc::waitpid(child, &mut status, libc::WNOHANG) == child {
                let bytes = status.to_ne_bytes();
                libc::write(STATUS_FD, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
        }
    }
}

/// Collects every child of the supervisor (the command and the orphans it left, killed just
/// before), for at most a second: a process that escaped the group (`setsid`) is left to init.
///
/// # Safety
/// Only in the supervisor.
unsafe fn reap_all() {
    unsafe {
        let pause = libc::timespec { tv_sec: 0, tv_nsec: 10_000_000 };
        let mut waits = 0;
        loop {
            let mut status = 0;
            match libc::waitpid(-1, &mut status, libc::WNOHANG) {
                r if r > 0 => {}
                0 if waits < 100 => {
                    waits += 1;
                    libc::nanosleep(&pause, std::ptr::null_mut());
                }
                _ => return,
            }
        }
    }
}

/// Closes every descriptor from `first` up.
///
/// # Safety
/// Only in a forked child: it closes descriptors that other code may think it owns.
unsafe fn close_from(first: RawFd) {
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) == 0 {
            return;
        }
        // Kernels before 5.9: one by one, up to the limit of open files.
        let mut limit: libc::rlimit = std::mem::zeroed();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(65_536) as RawFd
        } else {
            4096
        };
        for fd in first..max {
            libc::close(fd);
        }
    }
}

/// The standard environment of drover's process plus `extra` (which wins), as the command gets it.
pub fn environment(extra: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in extra {
        env.insert(k.clone(), v.clone());
    }
    env.into_iter().collect()
}

/// The shell, found on `PATH` as `sh -c` would be.
pub fn shell() -> io::Result<PathBuf> {
    find_program("sh").ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no `sh` on PATH"))
}
