//! A small reader for kernel BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member, so the raw-tracepoint programs can read
//! `task_struct.pid` and `.tgid` on any kernel without compiling against its headers
//! (Rust eBPF has no CO-RE relocations; the agent does this one relocation itself).
//!
//! aya parses the same BTF, but aya-obj 0.3 keeps what a lookup needs private (types
//! by id, struct members and their offsets, the string table), so this reader walks
//! the blob itself. The format's definitions are aya-obj's, not copies: the kinds
//! ([`BtfKind`]) and the record layouts (its bindings of the kernel's `btf_*` structs,
//! linux/Documentation/bpf/btf.rst). Parsing with aya here and handing that copy to the
//! loader would not save a parse: aya 0.14's `EbpfLoader::new` parses the kernel's BTF
//! itself, so two full copies would be alive at once (start-up peak 26 → 41 MiB).

use std::{
    mem::{offset_of, size_of},
    path::Path,
};

use aya_obj::{
    btf::BtfKind,
    generated::{
        btf_array, btf_decl_tag, btf_enum, btf_header, btf_member, btf_param, btf_type, btf_var,
        btf_var_secinfo,
    },
};

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file is not there: the kernel was built without BTF.
    #[error("{path} does not exist: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF)")]
    Missing {
        /// The BTF file.
        path: String,
    },
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

/// `BTF_MAGIC` (include/uapi/linux/btf.h; aya-obj has no constant for it).
const MAGIC: u16 = 0xeb9f;
/// Size of a `struct btf_enum64` (not among aya-obj's bindings): name and the two
/// halves of the value.
const ENUM64_SIZE: usize = size_of::<[u32; 3]>();

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

/// A type record's fixed part (`struct btf_type`).
struct TypeHeader {
    name: u32,
    kind: Option<BtfKind>,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Where its kind-specific data starts, in the type section.
    rest: usize,
}

impl TypeHeader {
    fn is_composite(&self) -> bool {
        matches!(self.kind, Some(BtfKind::Struct | BtfKind::Union))
    }

    /// Whether it names or qualifies another type, `size_or_type`.
    fn is_alias(&self) -> bool {
        use BtfKind::*;
        matches!(
            self.kind,
            Some(Typedef | Volatile | Const | Restrict | TypeTag)
        )
    }

    /// Length of the kind-specific data after the fixed part; `None` for a kind this
    /// reader does not know (a newer kernel's), whose length it cannot tell.
    fn data_len(&self) -> Option<usize> {
        let each = |record: usize| record * self.vlen;
        Some(match self.kind? {
            // The INT encoding word.
            BtfKind::Int => size_of::<u32>(),
            BtfKind::Var => size_of::<btf_var>(),
            BtfKind::DeclTag => size_of::<btf_decl_tag>(),
            BtfKind::Array => size_of::<btf_array>(),
            BtfKind::Struct | BtfKind::Union => each(size_of::<btf_member>()),
            BtfKind::Enum => each(size_of::<btf_enum>()),
            BtfKind::FuncProto => each(size_of::<btf_param>()),
            BtfKind::DataSec => each(size_of::<btf_var_secinfo>()),
            BtfKind::Enum64 => each(ENUM64_SIZE),
            BtfKind::Ptr
            | BtfKind::Fwd
            | BtfKind::Typedef
            | BtfKind::Volatile
            | BtfKind::Const
            | BtfKind::Restrict
            | BtfKind::Func
            | BtfKind::Float
            | BtfKind::TypeTag => 0,
            BtfKind::Unknown => return None,
        })
    }
}

impl Btf {
    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| {
            let path = path.display().to_string();
            match source.kind() {
                std::io::ErrorKind::NotFound => BtfError::Missing { path },
                _ => BtfError::Read { path, source },
            }
        })?;
        Self::parse(data)
    }

    /// Parses little-endian BTF bytes.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let bad = BtfError::Malformed;
        if u16_at(&data, offset_of!(btf_header, magic)) != Some(MAGIC) {
            return Err(bad("bad magic"));
        }
        let word = |at| {
            u32_at(&data, at)
                .map(|w| w as usize)
                .ok_or(bad("short header"))
        };
        let hdr_len = word(offset_of!(btf_header, hdr_len))?;
        let type_off = word(offset_of!(btf_header, type_off))?;
        let type_len = word(offset_of!(btf_header, type_len))?;
        let str_off = word(offset_of!(btf_header, str_off))?;
        let str_len = word(offset_of!(btf_header, str_len))?;
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
        btf.index()?;
        Ok(btf)
    }

    /// Records where each type starts (ids are consecutive from 1).
    fn index(&mut self) -> Result<(), BtfError> {
        let bad = BtfError::Malformed;
        let mut at = 0;
        while at < self.types.len() {
            let header = self.header_at(at).ok_or(bad("truncated type"))?;
            let len = header.data_len().ok_or(bad("unknown BTF kind"))?;
            if header.rest + len > self.types.len() {
                return Err(bad("truncated type"));
            }
            self.offsets.push(at as u32);
            at = header.rest + len;
        }
        Ok(())
    }

    fn type_section(&self) -> &[u8] {
        &self.data[self.types.clone()]
    }

    fn header_at(&self, at: usize) -> Option<TypeHeader> {
        let types = self.type_section();
        let info = u32_at(types, at + offset_of!(btf_type, info))?;
        Some(TypeHeader {
            name: u32_at(types, at + offset_of!(btf_type, name_off))?,
            // Bits 24–28 (the kernel's BTF_INFO_KIND).
            kind: BtfKind::try_from((info >> 24) & 0x1f).ok(),
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(types, at + offset_of!(btf_type, __bindgen_anon_1))?,
            rest: at + size_of::<btf_type>(),
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
                Some(h) if h.is_alias() => id = h.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// The members of struct or union `id` (none for other kinds).
    fn members(&self, id: u32) -> impl Iterator<Item = Member> + '_ {
        let header = self.header(id).filter(TypeHeader::is_composite);
        let (rest, vlen, kind_flag) =
            header.map_or((0, 0, false), |h| (h.rest, h.vlen, h.kind_flag));
        let types = self.type_section();
        (0..vlen).filter_map(move |m| {
            let base = rest + size_of::<btf_member>() * m;
            let offset = u32_at(types, base + offset_of!(btf_member, offset))?;
            Some(Member {
                name: u32_at(types, base + offset_of!(btf_member, name_off))?,
                type_id: u32_at(types, base + offset_of!(btf_member, type_))?,
                // With kind_flag set, the top byte is the bitfield size (BTF_MEMBER_BIT_OFFSET).
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
            self.header(id)
                .is_some_and(|h| h.is_composite() && h.name != 0 && self.string(h.name) == name)
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
        // Kind 20 does not exist (yet): its record length is unknown.
        let mut unknown = sample();
        unknown[24 + 7] = 20;
        assert!(
            matches!(
                Btf::parse(unknown),
                Err(BtfError::Malformed("unknown BTF kind"))
            ),
            "a kind whose length is unknown must not be skipped"
        );
    }

    #[test]
    fn a_kernel_without_btf_says_so() {
        let err = Btf::from_file(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("no file, no BTF");
        assert!(matches!(err, BtfError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
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
