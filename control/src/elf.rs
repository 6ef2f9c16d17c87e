//! The `runtime = "binary"` entrypoint check: the rule lives in
//! `containerpub_wire::elf`, shared with the CLI's bundle checks.

pub use containerpub_wire::elf::{GLIBC_INTERP, Linking, check_x86_64};

#[cfg(test)]
pub(crate) mod tests {
    pub(crate) use containerpub_wire::elf::{fake_elf, fake_elf_with_interp};
}
