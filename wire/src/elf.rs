//! Just enough ELF parsing to accept a `runtime = "binary"` entrypoint: a
//! 64-bit little-endian x86-64 executable, either static (no `PT_INTERP`
//! header; static-pie included), which runs `FROM scratch`, or dynamically
//! linked against glibc (`PT_INTERP` = `/lib64/ld-linux-x86-64.so.2`), which
//! runs on the `debian` base image. Another interpreter (musl's, say) is
//! refused: the base image does not have it. One rule for both sides: the
//! control plane refuses such a bundle, the CLI says so before it uploads.

const PT_INTERP: u32 = 3;
/// The program interpreter of glibc on x86-64: what the `debian` base has.
pub const GLIBC_INTERP: &str = "/lib64/ld-linux-x86-64.so.2";

/// How an accepted executable is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linking {
    /// No program interpreter: runs on an empty image.
    Static,
    /// glibc's dynamic loader: needs the `debian` base image.
    Glibc,
}
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Checks the first bytes of a file (at least its ELF and program headers,
/// and the interpreter path when there is one). The error says what is
/// wrong, for the user.
pub fn check_x86_64(head: &[u8]) -> Result<Linking, String> {
    if head.len() < 64 || head[..4] != *b"\x7fELF" {
        return Err("is not an ELF executable (a Linux x86-64 binary is required)".into());
    }
    if head[4] != 2 || head[5] != 1 {
        return Err("is not a 64-bit little-endian ELF file (x86-64 is required)".into());
    }
    let e_type = u16_at(head, 16).unwrap_or(0);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(format!("is not an executable (ELF type {e_type})"));
    }
    let machine = u16_at(head, 18).unwrap_or(0);
    if machine != EM_X86_64 {
        return Err(format!(
            "is built for ELF machine {machine}, not x86-64 (62)"
        ));
    }
    let phoff = u64_at(head, 32).unwrap_or(0);
    let phentsize = u16_at(head, 54).unwrap_or(0) as u64;
    let phnum = u16_at(head, 56).unwrap_or(0) as u64;
    if phnum == 0 || phentsize < 56 {
        return Err("has no program headers: not an executable".into());
    }
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or("has a malformed program header table")?;
        let p_type = u32_at(head, at).ok_or("has program headers beyond the first 64 KiB")?;
        if p_type == PT_INTERP {
            let offset = u64_at(head, at + 8).unwrap_or(u64::MAX);
            let size = u64_at(head, at + 32).unwrap_or(u64::MAX);
            let interp = usize::try_from(offset)
                .ok()
                .zip(usize::try_from(size).ok())
                .and_then(|(o, n)| head.get(o..o.checked_add(n)?))
                .ok_or("has its program interpreter path beyond the first 64 KiB")?;
            let interp = interp.split(|b| *b == 0).next().unwrap_or_default();
            if interp == GLIBC_INTERP.as_bytes() {
                return Ok(Linking::Glibc);
            }
            return Err(format!(
                "is dynamically linked against {:?}, which the platform's debian base \
                 image does not have (only glibc's {GLIBC_INTERP}): link it against glibc, \
                 or statically (e.g. RUSTFLAGS=\"-C target-feature=+crt-static\")",
                String::from_utf8_lossy(interp)
            ));
        }
    }
    Ok(Linking::Static)
}

/// A minimal ELF64 x86-64 header with the given program header types;
/// a `PT_INTERP` header points at glibc's loader path after them.
#[doc(hidden)]
pub fn fake_elf(machine: u16, program_headers: &[u32]) -> Vec<u8> {
    fake_elf_with_interp(machine, program_headers, GLIBC_INTERP)
}

#[doc(hidden)]
pub fn fake_elf_with_interp(machine: u16, program_headers: &[u32], interp: &str) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56 * program_headers.len()];
    let interp_at = b.len() as u64;
    b.extend_from_slice(interp.as_bytes());
    b.push(0);
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&(program_headers.len() as u16).to_le_bytes());
    for (i, t) in program_headers.iter().enumerate() {
        let at = 64 + 56 * i;
        b[at..at + 4].copy_from_slice(&t.to_le_bytes());
        if *t == PT_INTERP {
            b[at + 8..at + 16].copy_from_slice(&interp_at.to_le_bytes());
            b[at + 32..at + 40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_is_accepted() {
        assert_eq!(
            check_x86_64(&fake_elf(EM_X86_64, &[1, 1, 4])),
            Ok(Linking::Static)
        );
    }

    #[test]
    fn glibc_dynamic_is_accepted_other_loaders_are_not() {
        assert_eq!(
            check_x86_64(&fake_elf(EM_X86_64, &[6, PT_INTERP, 1])),
            Ok(Linking::Glibc)
        );
        let musl = fake_elf_with_interp(EM_X86_64, &[6, PT_INTERP], "/lib/ld-musl-x86_64.so.1");
        let err = check_x86_64(&musl).unwrap_err();
        assert!(err.contains("ld-musl") && err.contains("glibc"), "{err}");
        // An interpreter header pointing outside the bytes read.
        let mut far = fake_elf(EM_X86_64, &[PT_INTERP]);
        far[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check_x86_64(&far).unwrap_err().contains("beyond"));
    }

    #[test]
    fn wrong_machine_and_non_elf_are_rejected() {
        let err = check_x86_64(&fake_elf(183, &[1])).unwrap_err();
        assert!(err.contains("183"), "{err}");
        let err = check_x86_64(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.contains("not an ELF"), "{err}");
    }

    #[test]
    fn the_test_binary_itself_is_checked() {
        // This test binary is a real x86-64 ELF; on a normal (dynamic) build
        // it is linked against glibc.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let result = check_x86_64(&exe[..exe.len().min(65536)]);
        if cfg!(all(
            target_arch = "x86_64",
            target_env = "gnu",
            not(target_feature = "crt-static")
        )) {
            assert_eq!(result, Ok(Linking::Glibc));
        }
    }
}
