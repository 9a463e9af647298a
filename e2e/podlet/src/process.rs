//! Process bookkeeping: pid files that survive a podlet restart, and signalling process groups.

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`); guards against pid reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Parses field 22 of a `/proc/<pid>/stat` line (the command name may contain spaces and parentheses).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields after `comm` start at field 3 (state); start time is field 22.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Records `pid` and its start time in `path`.
pub fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    let st = start_time(pid).unwrap_or(0);
    std::fs::write(path, format!("{pid} {st}\n"))
}

/// Reads a pid file and returns the pid when that very process still runs.
pub fn live_pid_from_file(path: &Path) -> Option<u32> {
    let content = std::fs::read_to_string(path).ok()?;
    let mut parts = content.split_whitespace();
    let pid: u32 = parts.next()?.parse().ok()?;
    let recorded: u64 = parts.next()?.parse().ok()?;
    (start_time(pid) == Some(recorded)).then_some(pid)
}

/// Sends `sig` to a container's init process. It is PID 1 of the container's PID namespace, so
/// SIGKILL takes every process of the container with it, and other signals reach it only when it
/// handles them, as under any container runtime.
pub fn signal_process(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid)
        && raw > 0
        && let Err(e) = kill(Pid::from_raw(raw), sig)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pid, ?sig, error = %e, "signalling the container failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "1234 (my (weird) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(line), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_pid_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.pid");
        write_pid_file(&f, std::process::id()).unwrap();
        assert_eq!(live_pid_from_file(&f), Some(std::process::id()));
        std::fs::write(&f, format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(
            live_pid_from_file(&f),
            None,
            "a different start time means a reused pid"
        );
    }
}
