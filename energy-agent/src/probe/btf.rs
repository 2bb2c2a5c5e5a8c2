//! A small reader for kernel BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member, so the raw-tracepoint programs can read
//! `task_struct.pid` and `.tgid` on any kernel without compiling against its headers
//! (Rust eBPF has no CO-RE relocations; the agent does this one relocation itself).
//!
//! Format: linux/Documentation/bpf/btf.rst — a header, a type section of
//! `struct btf_type` records (each followed by kind-specific data), a string section.

use std::path::Path;

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The BTF file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF or is truncated.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// The struct or member does not exist.
    #[error("no member {member} in struct {name} in the kernel's BTF")]
    NotFound {
        /// Struct name.
        name: String,
        /// Member name.
        member: String,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Clone, Copy, Debug)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

/// A BTF blob with an index of where each type's record starts. Members are read from
/// the blob when asked for, so parsing the kernel's 5 MB of BTF costs little more
/// memory than the blob itself.
pub struct Btf {
    data: Vec<u8>,
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// Type id − 1 → offset of its record in the type section.
    offsets: Vec<u32>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A type record's fixed part.
struct TypeHeader {
    name: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Where its kind-specific data starts, in the type section.
    rest: usize,
}

impl Btf {
    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses little-endian BTF bytes.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let bad = BtfError::Malformed;
        if u16_at(&data, 0) != Some(MAGIC) {
            return Err(bad("bad magic"));
        }
        let word = |at| {
            u32_at(&data, at)
                .map(|w| w as usize)
                .ok_or(bad("short header"))
        };
        let (hdr_len, type_off, type_len) = (word(4)?, word(8)?, word(12)?);
        let (str_off, str_len) = (word(16)?, word(20)?);
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if types.end > data.len() {
            return Err(bad("type section out of bounds"));
        }
        if strings.end > data.len() {
            return Err(bad("string section out of bounds"));
        }
        let mut btf = Self {
            data,
            types,
            strings,
            offsets: Vec::new(),
        };
        let mut at = 0;
        while at < btf.types.len() {
            let header = btf.header_at(at).ok_or(bad("truncated type"))?;
            let extra = match header.kind {
                1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
                3 => 12,          // ARRAY
                KIND_STRUCT | KIND_UNION => 12 * header.vlen,
                6 | 13 => 8 * header.vlen,   // ENUM, FUNC_PROTO
                15 | 19 => 12 * header.vlen, // DATASEC, ENUM64
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                _ => return Err(bad("unknown BTF kind")),
            };
            if header.rest + extra > btf.types.len() {
                return Err(bad("truncated type"));
            }
            btf.offsets.push(at as u32);
            at = header.rest + extra;
        }
        Ok(btf)
    }

    fn type_section(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn header_at(&self, at: usize) -> Option<TypeHeader> {
        let types = self.type_section();
        let info = u32_at(types, at + 4)?;
        Some(TypeHeader {
            name: u32_at(types, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(types, at + 8)?,
            rest: at + 12,
        })
    }

    fn header(&self, id: u32) -> Option<TypeHeader> {
        let at = *self.offsets.get((id as usize).checked_sub(1)?)?;
        self.header_at(at as usize)
    }

    fn string(&self, offset: u32) -> &str {
        let strings = &self.data[self.strings.clone()];
        let rest = strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedef/volatile/const/restrict/type-tag chains.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.header(id) {
                Some(h) if matches!(h.kind, 8..=11 | 18) => id = h.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// The members of struct or union `id` (none for other kinds).
    fn members(&self, id: u32) -> impl Iterator<Item = Member> + '_ {
        let header = self
            .header(id)
            .filter(|h| h.kind == KIND_STRUCT || h.kind == KIND_UNION);
        let (rest, vlen, kind_flag) =
            header.map_or((0, 0, false), |h| (h.rest, h.vlen, h.kind_flag));
        let types = self.type_section();
        (0..vlen).filter_map(move |m| {
            let base = rest + 12 * m;
            let offset = u32_at(types, base + 8)?;
            Some(Member {
                name: u32_at(types, base)?,
                type_id: u32_at(types, base + 4)?,
                bit_offset: if kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                },
            })
        })
    }

    /// Byte offset of `path` (`member` or `member.sub.field`) in struct `name`, looking
    /// through anonymous struct and union members (as `randomized_struct_fields_start`
    /// and unions create).
    pub fn member_offset(&self, name: &str, path: &str) -> Result<u32, BtfError> {
        let not_found = || BtfError::NotFound {
            name: name.into(),
            member: path.into(),
        };
        let candidates = (1..=self.offsets.len() as u32).filter(|&id| {
            self.header(id).is_some_and(|h| {
                (h.kind == KIND_STRUCT || h.kind == KIND_UNION)
                    && h.name != 0
                    && self.string(h.name) == name
            })
        });
        'candidates: for id in candidates {
            let mut type_id = id;
            let mut bits = 0;
            for part in path.split('.') {
                match self.find(type_id, part, 0) {
                    Some((offset, member_type)) => {
                        bits += offset;
                        type_id = member_type;
                    }
                    None => continue 'candidates,
                }
            }
            return Ok(bits / 8);
        }
        Err(not_found())
    }

    /// (bit offset, type id) of `member` in composite `id`.
    fn find(&self, id: u32, member: &str, depth: usize) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in self.members(self.resolve(id)) {
            if m.name == 0 {
                if let Some((inner, type_id)) = self.find(m.type_id, member, depth + 1) {
                    return Some((m.bit_offset + inner, type_id));
                }
            } else if self.string(m.name) == member {
                return Some((m.bit_offset, m.type_id));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: struct task_struct { long state; struct { int pid; int tgid; }; }
    /// with `tgid` placed inside an anonymous struct at byte 8 (bits 64).
    fn sample() -> Vec<u8> {
        let strings = b"\0task_struct\0state\0pid\0tgid\0int\0se\0".to_vec();
        // string offsets: task_struct=1, state=13, pid=19, tgid=23, int=28, se=32
        let mut types = Vec::new();
        let push = |t: &mut Vec<u8>, words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // id 1: INT "int", size 4, encoding word
        push(&mut types, &[28, 1 << 24, 4, 32]);
        // id 2: anonymous STRUCT with 2 members, size 8
        push(&mut types, &[0, (4 << 24) | 2, 8]);
        push(&mut types, &[19, 1, 0]); // pid at bit 0
        push(&mut types, &[23, 1, 32]); // tgid at bit 32
        // id 3: TYPEDEF to id 2 (unused, exercises alias parsing)
        push(&mut types, &[0, 8 << 24, 2]);
        // id 4: STRUCT task_struct, kind_flag set (bitfield encoding), 3 members, size 24
        push(&mut types, &[1, (1 << 31) | (4 << 24) | 3, 24]);
        push(&mut types, &[13, 1, 0]); // state at bit 0
        push(&mut types, &[0, 2, 64]); // anonymous struct at bit 64
        push(&mut types, &[32, 3, 128]); // se: typedef of the same struct, at bit 128
        let mut data = Vec::new();
        push(&mut data, &[]);
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_direct_and_nested_members() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.member_offset("task_struct", "state").unwrap(), 0);
        assert_eq!(btf.member_offset("task_struct", "pid").unwrap(), 8);
        assert_eq!(btf.member_offset("task_struct", "tgid").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("task_struct", "nope"),
            Err(BtfError::NotFound { .. })
        ));
        assert!(btf.member_offset("nope", "pid").is_err());
    }

    #[test]
    fn follows_dotted_paths_through_named_members() {
        let btf = Btf::parse(sample()).unwrap();
        // se is a named member whose type is a typedef of a struct: se.tgid = 16 + 4.
        assert_eq!(btf.member_offset("task_struct", "se").unwrap(), 16);
        assert_eq!(btf.member_offset("task_struct", "se.tgid").unwrap(), 20);
        assert!(btf.member_offset("task_struct", "state.x").is_err());
        assert!(btf.member_offset("task_struct", "se.nope").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(b"nope".to_vec()),
            Err(BtfError::Malformed(_))
        ));
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(truncated).is_err());
    }

    #[test]
    fn reads_this_kernels_task_struct() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("no kernel BTF here; skipped");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        // pid_t pid; pid_t tgid; are adjacent in every kernel since 2.6.
        assert_eq!(tgid, pid + 4);
        assert!(pid > 0);
        let se = btf.member_offset("task_struct", "se").unwrap();
        let runtime = btf
            .member_offset("task_struct", "se.sum_exec_runtime")
            .unwrap();
        assert!(
            runtime > se && runtime < se + 256,
            "se at {se}, runtime at {runtime}"
        );
    }
}
