//! tracefs: where it is, mounting it when missing, and reading tracepoint formats.
//!
//! aya finds tracepoint ids under tracefs; on hosts that boot without it mounted (this
//! project's CI machines among them) the agent mounts it before attaching.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

/// The places tracefs is found, in aya's order of preference.
pub const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors reading tracefs.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// No mounted tracefs and mounting one failed.
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    Mount(#[source] io::Error),
    /// tracefs is there but this process may not look inside (root-only, mode 0700).
    #[error(
        "tracefs at {0} is readable by root only: run as root, or give the binary cap_dac_read_search too (setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep)"
    )]
    Unreadable(PathBuf),
    /// A tracepoint's format file could not be read.
    #[error("tracepoint {category}:{name} is not available ({path}): {source}")]
    Missing {
        /// Tracepoint category, e.g. `sched`.
        category: String,
        /// Tracepoint name, e.g. `sched_switch`.
        name: String,
        /// The format file that was read.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
}

/// A mounted tracefs tree.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Uses the tracefs tree at `root` (tests point this at a directory they wrote).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The first mounted tracefs among [`TRACEFS_PATHS`], if any.
    pub fn find() -> Option<Self> {
        TRACEFS_PATHS
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
            .map(Self::at)
    }

    /// The mounted tracefs, mounting it at /sys/kernel/tracing first when none is.
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        if let Some(found) = Self::find() {
            return Ok(found);
        }
        for path in TRACEFS_PATHS.iter().map(Path::new) {
            if let Err(e) = std::fs::metadata(path.join("events"))
                && e.kind() == io::ErrorKind::PermissionDenied
            {
                return Err(TracefsError::Unreadable(path.to_path_buf()));
            }
        }
        mount_tracefs(Path::new(TRACEFS_PATHS[0])).map_err(TracefsError::Mount)?;
        log::info!("mounted tracefs at {}", TRACEFS_PATHS[0]);
        Self::find().ok_or_else(|| {
            TracefsError::Mount(io::Error::other("mounted, but events/ is still missing"))
        })
    }

    /// The root directory of this tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Field offsets of a tracepoint, from its `format` file.
    pub fn format(&self, category: &str, name: &str) -> Result<TracepointFormat, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Missing {
            category: category.into(),
            name: name.into(),
            path,
            source,
        })?;
        Ok(TracepointFormat::parse(&text))
    }
}

/// Parsed `format` file of a tracepoint: field name → (offset, size).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TracepointFormat {
    fields: HashMap<String, (usize, usize)>,
}

impl TracepointFormat {
    /// Parses lines like `field:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;`.
    pub fn parse(text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';').map(str::trim) {
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d);
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse().ok();
                }
            }
            if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
                // The name is the last word, without any array suffix: `char prev_comm[16]`.
                let name = decl.rsplit(' ').next().unwrap_or(decl);
                let name = name.split('[').next().unwrap_or(name);
                fields.insert(name.to_string(), (offset, size));
            }
        }
        Self { fields }
    }

    /// Offset of `field` in the record, if present.
    pub fn offset(&self, field: &str) -> Option<usize> {
        self.fields.get(field).map(|&(offset, _)| offset)
    }

    /// Size of `field` in bytes, if present.
    pub fn size(&self, field: &str) -> Option<usize> {
        self.fields.get(field).map(|&(_, size)| size)
    }
}

fn mount_tracefs(target: &Path) -> io::Result<()> {
    let target_c = CString::new(target.as_os_str().as_encoded_bytes())?;
    let fstype = CString::new("tracefs")?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Verbatim from /sys/kernel/tracing/events/sched/sched_switch/format on Linux 6.18.
    const SCHED_SWITCH: &str = "name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s prev_pid=%d\", REC->prev_comm, REC->prev_pid
";

    #[test]
    fn parses_real_format() {
        let f = TracepointFormat::parse(SCHED_SWITCH);
        assert_eq!(f.offset("prev_comm"), Some(8));
        assert_eq!(f.size("prev_comm"), Some(16));
        assert_eq!(f.offset("prev_pid"), Some(24));
        assert_eq!(f.offset("prev_state"), Some(32));
        assert_eq!(f.size("prev_state"), Some(8));
        assert_eq!(f.offset("next_pid"), Some(56));
        assert_eq!(f.offset("common_pid"), Some(4));
        assert_eq!(f.offset("nope"), None);
    }
}
