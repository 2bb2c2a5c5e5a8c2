//! What procfs says about one process: the one reading of `/proc/<pid>` for identities
//! (and of `cmdline` for the receiver's `--service` rules).

use std::path::Path;

use super::{ProcessInfo, cgroup};

/// The process's start time, `/proc/<pid>/stat` field 22 (`starttime`: clock ticks
/// after boot). With the pid it names one process for the life of the host: a reused
/// pid belongs to a process that started later. None when the process is gone.
pub fn start_time(dir: &Path) -> Option<u64> {
    parse_start_time(&std::fs::read_to_string(dir.join("stat")).ok()?)
}

/// Field 22 of a `/proc/<pid>/stat` line. The name (field 2, in parentheses) may hold
/// spaces and parentheses itself, so the fields are counted from the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: field 3 (state) is the first, so field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The identity of the process whose procfs directory is `dir`, as one process: the
/// start time is read before and after the rest, and the reading is taken again when
/// they differ (the pid was reused meanwhile; the next lookup checks it again).
/// `exited`, with no start time, when the process is gone.
pub fn read(pid: u32, dir: &Path) -> ProcessInfo {
    let info = read_once(pid, dir);
    if info.start_time.is_some() && start_time(dir) != info.start_time {
        return read_once(pid, dir);
    }
    info
}

fn read_once(pid: u32, dir: &Path) -> ProcessInfo {
    let start_time = start_time(dir);
    let comm = read_trimmed(&dir.join("comm")).unwrap_or_default();
    let cmdline = read_cmdline(dir);
    let exe_name = std::fs::read_link(dir.join("exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| n.trim_end_matches(" (deleted)").to_string())
        .or_else(|| {
            cmdline
                .first()
                .and_then(|a| Path::new(a).file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| comm.clone());
    let cgroups = std::fs::read_to_string(dir.join("cgroup"))
        .map(|t| cgroup::ProcCgroups::parse(&t))
        .unwrap_or_default();
    let container = cgroups.container();
    ProcessInfo {
        pid,
        container_id: container.as_ref().map(|c| c.id.clone()),
        container,
        cgroup: cgroups.v2,
        exited: start_time.is_none(),
        start_time,
        comm,
        cmdline,
        exe_name,
    }
}

/// The command line of the process whose procfs directory is `dir` (`/proc/<pid>`):
/// its NUL-separated arguments, empty ones left out, read as lossy UTF-8. Empty when
/// it cannot be read (kernel threads, exited processes). The one reading of
/// `cmdline`, for identities and for the receiver's `--service` rules alike.
pub fn read_cmdline(dir: &Path) -> Vec<String> {
    std::fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_string())
}
