//! Just enough ELF parsing to accept a `runtime = "binary"` entrypoint: a
//! 64-bit little-endian x86-64 executable without a `PT_INTERP` header
//! (static, including static-pie), since this node has no glibc base image.
//! One rule for both sides: the control plane refuses such a bundle, the
//! CLI says so before it uploads (issue 13's bundle checks).

const PT_INTERP: u32 = 3;
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

/// Checks the first bytes of a file (at least its ELF and program headers).
/// The error says what is wrong, for the user.
pub fn check_static_x86_64(head: &[u8]) -> Result<(), String> {
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
            return Err(
                "is dynamically linked (it has a PT_INTERP program header); only \
                        static executables are supported on this node (no glibc base image yet): \
                        link it statically, e.g. RUSTFLAGS=\"-C target-feature=+crt-static\""
                    .into(),
            );
        }
    }
    Ok(())
}

/// A minimal ELF64 header for `machine` with the given program header
/// types (tests of both sides build their bundles with it).
#[doc(hidden)]
pub fn fake_elf(machine: u16, program_headers: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; 64 + 56 * program_headers.len()];
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
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_is_accepted() {
        assert_eq!(
            check_static_x86_64(&fake_elf(EM_X86_64, &[1, 1, 4])),
            Ok(())
        );
    }

    #[test]
    fn dynamic_is_rejected() {
        let err = check_static_x86_64(&fake_elf(EM_X86_64, &[6, PT_INTERP, 1])).unwrap_err();
        assert!(err.contains("only static executables"), "{err}");
    }

    #[test]
    fn wrong_machine_and_non_elf_are_rejected() {
        let err = check_static_x86_64(&fake_elf(183, &[1])).unwrap_err();
        assert!(err.contains("183"), "{err}");
        let err = check_static_x86_64(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.contains("not an ELF"), "{err}");
    }

    #[test]
    fn the_test_binary_itself_is_checked() {
        // This test binary is a real x86-64 ELF; on a normal (dynamic) build
        // it has PT_INTERP and must be refused.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let result = check_static_x86_64(&exe[..exe.len().min(65536)]);
        if cfg!(all(
            target_arch = "x86_64",
            not(target_feature = "crt-static")
        )) {
            assert!(result.unwrap_err().contains("dynamically linked"));
        }
    }
}
