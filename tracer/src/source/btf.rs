//! Field offsets of kernel structures, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`): the kernel side walks a descriptor to its
//! socket and reads the socket's TCP sequence counters with them, on any
//! kernel build, without compiling against its headers.

use tracer_common::SockOffsets;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type of the BTF type section: where its record starts.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    info: u32,
    /// Offset of the kind-specific data after the 12-byte common header.
    data: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
}

/// A parsed BTF blob: its types by id (id 0 is `void`) and its strings.
pub struct Btf<'a> {
    bytes: &'a [u8],
    types: Vec<Type>,
    strings: &'a [u8],
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    /// Parses a little-endian BTF blob; `None` if it is malformed.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if u16::from_le_bytes(bytes.get(0..2)?.try_into().ok()?) != MAGIC {
            return None;
        }
        let hdr_len = u32_at(bytes, 4)? as usize;
        let type_off = hdr_len + u32_at(bytes, 8)? as usize;
        let type_len = u32_at(bytes, 12)? as usize;
        let str_off = hdr_len + u32_at(bytes, 16)? as usize;
        let str_len = u32_at(bytes, 20)? as usize;
        let section = bytes.get(type_off..type_off.checked_add(type_len)?)?;
        let strings = bytes.get(str_off..str_off.checked_add(str_len)?)?;
        let mut types = vec![Type {
            name_off: 0,
            info: 0,
            data: 0,
        }];
        let mut at = 0;
        while at < section.len() {
            let ty = Type {
                name_off: u32_at(section, at)?,
                info: u32_at(section, at + 4)?,
                data: type_off + at + 12,
            };
            let extra = match ty.kind() {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * ty.vlen(),
                KIND_ENUM | KIND_FUNC_PROTO => 8 * ty.vlen(),
                _ => 0,
            };
            at += 12 + extra;
            types.push(ty);
        }
        Some(Self {
            bytes,
            types,
            strings,
        })
    }

    fn name(&self, ty: &Type) -> &[u8] {
        let rest = self.strings.get(ty.name_off as usize..).unwrap_or(&[]);
        rest.split(|&b| b == 0).next().unwrap_or(&[])
    }

    /// The struct named `name`, if the blob defines one (not just declares).
    fn find_struct(&self, name: &str) -> Option<u32> {
        (1..self.types.len() as u32).find(|&id| {
            let ty = &self.types[id as usize];
            ty.kind() == KIND_STRUCT && self.name(ty) == name.as_bytes()
        })
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = u32_at(self.bytes, ty.data - 4)?;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `member` in struct or union `ty`, looking into
    /// anonymous struct and union members and through the first member
    /// (a `tcp_sock` starts with its `inet_connection_sock`, which starts
    /// with its `inet_sock`...). `None` for a bitfield.
    fn member_offset(&self, ty: &Type, member: &str, depth: u32, budget: &mut u32) -> Option<u32> {
        if depth > 8 || !matches!(ty.kind(), KIND_STRUCT | KIND_UNION) {
            return None;
        }
        // A malformed blob can nest a struct in itself many times over: the
        // members looked at in all are bounded, not just the depth.
        *budget = budget.checked_sub(u32::try_from(ty.vlen()).ok()?)?;
        let mut nested = Vec::new();
        for i in 0..ty.vlen() {
            let at = ty.data + 12 * i;
            let name_off = u32_at(self.bytes, at)?;
            let type_id = u32_at(self.bytes, at + 4)?;
            let raw = u32_at(self.bytes, at + 8)?;
            let (bits, bitfield) = if ty.kind_flag() {
                (raw & 0xff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let name = self.name(&Type {
                name_off,
                info: 0,
                data: 0,
            });
            if name == member.as_bytes() {
                return (!bitfield && bits % 8 == 0).then_some(bits / 8);
            }
            if name.is_empty() || i == 0 {
                nested.push((type_id, bits / 8));
            }
        }
        nested.into_iter().find_map(|(type_id, base)| {
            let inner = self.resolve(type_id)?;
            base.checked_add(self.member_offset(inner, member, depth + 1, budget)?)
        })
    }

    /// Byte offset of `member` in `struct strukt`.
    pub fn offset(&self, strukt: &str, member: &str) -> Option<u32> {
        let id = self.find_struct(strukt)?;
        // `task_struct`, the largest, has a few hundred members all told.
        let mut budget = 100_000;
        self.member_offset(&self.types[id as usize], member, 0, &mut budget)
    }

    /// The offsets of [`SockOffsets`], or what is missing.
    pub fn sock_offsets(&self) -> Result<SockOffsets, String> {
        let field = |strukt: &str, member: &str| {
            self.offset(strukt, member)
                .ok_or_else(|| format!("{strukt}.{member}"))
        };
        Ok(SockOffsets {
            task_files: field("task_struct", "files")?,
            files_fdt: field("files_struct", "fdt")?,
            fdt_max_fds: field("fdtable", "max_fds")?,
            fdt_fd: field("fdtable", "fd")?,
            file_private: field("file", "private_data")?,
            socket_sk: field("socket", "sk")?,
            sk_protocol: field("sock", "sk_protocol")?,
            sk_flags: field("sock", "skc_flags")?,
            icsk_ulp_ops: field("inet_connection_sock", "icsk_ulp_ops")?,
            copied_seq: field("tcp_sock", "copied_seq")?,
            rcv_nxt: field("tcp_sock", "rcv_nxt")?,
            write_seq: field("tcp_sock", "write_seq")?,
        })
    }
}

/// The running kernel's [`SockOffsets`] from `path`, or why not.
pub fn sock_offsets(path: &str) -> Result<SockOffsets, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let btf = Btf::parse(&bytes).ok_or_else(|| format!("{path}: not a BTF blob"))?;
    btf.sock_offsets()
        .map_err(|field| format!("{path} has no field {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built blob: `struct inner { int a; int b; }` and
    /// `struct outer { struct inner head; union { int x; int y; }; int z:4; int w; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0head\0x\0y\0z\0w\0".to_vec();
        let name = |s: &str| -> u32 {
            let needle = [b"\0", s.as_bytes(), b"\0"].concat();
            strings
                .windows(needle.len())
                .position(|w| w == needle)
                .map(|p| p as u32 + 1)
                .unwrap()
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 bits }
        push(&[name("inner"), (KIND_STRUCT << 24) | 2, 8]);
        push(&[name("a"), 1, 0, name("b"), 1, 32]);
        // 3: anonymous union { x, y }
        push(&[0, (KIND_UNION << 24) | 2, 4]);
        push(&[name("x"), 1, 0, name("y"), 1, 0]);
        // 4: struct outer, kind_flag set: head @0, union @64, z:4 @96, w @128
        push(&[name("outer"), (1 << 31) | (KIND_STRUCT << 24) | 4, 20]);
        push(&[name("head"), 2, 0, 0, 3, 64]);
        push(&[name("z"), 1, (4 << 24) | 96, name("w"), 1, 128]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_members_directly_in_anonymous_unions_and_through_the_first_member() {
        let bytes = blob();
        let btf = Btf::parse(&bytes).unwrap();
        assert_eq!(btf.offset("outer", "w"), Some(16));
        assert_eq!(btf.offset("outer", "y"), Some(8));
        assert_eq!(btf.offset("outer", "b"), Some(4));
        assert_eq!(btf.offset("inner", "b"), Some(4));
        assert_eq!(
            btf.offset("outer", "z"),
            None,
            "a bitfield has no byte offset"
        );
        assert_eq!(btf.offset("outer", "missing"), None);
        assert_eq!(btf.offset("nothing", "a"), None);
    }

    #[test]
    fn a_struct_nested_in_itself_ends() {
        // struct loop { struct loop; struct loop; ... } (anonymous members).
        let strings = b"\0loop\0".to_vec();
        let members = 60_000u32;
        let mut types = Vec::new();
        for w in [1u32, (KIND_STRUCT << 24) | members, 4] {
            types.extend_from_slice(&w.to_le_bytes());
        }
        for _ in 0..members {
            for w in [0u32, 1, 0] {
                types.extend_from_slice(&w.to_le_bytes());
            }
        }
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        let btf = Btf::parse(&blob).unwrap();
        assert_eq!(btf.offset("loop", "missing"), None);
    }

    #[test]
    fn rejects_truncated_and_foreign_blobs() {
        let bytes = blob();
        assert!(Btf::parse(&bytes[..30]).is_none());
        assert!(Btf::parse(b"\x7fELF not btf at all").is_none());
    }

    #[test]
    fn running_kernel_has_every_offset() {
        let path = "/sys/kernel/btf/vmlinux";
        if !std::path::Path::new(path).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{path} missing: this kernel has no BTF"
            );
            return;
        }
        let offsets = sock_offsets(path).unwrap();
        assert!(offsets.known(), "{offsets:?}");
        assert_eq!(offsets.fdt_max_fds, 0, "fdtable starts with max_fds");
        assert_eq!(offsets.fdt_fd, 8);
    }
}
