//! Just enough ELF reading to say whether a binary can run on the Functions Linux
//! workers: x86-64, static or dynamic, and the newest glibc symbol version it needs.

use anyhow::{Context, Result, bail};

/// What the package records about its binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linkage {
    /// `None`: statically linked (no program interpreter).
    pub interpreter: Option<String>,
    /// Newest `GLIBC_x.y` symbol version referenced, e.g. `(2, 34)`.
    pub glibc: Option<(u32, u32)>,
}

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 0x3e;

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    let s = b.get(at..at + 2).context("truncated ELF header")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).context("truncated ELF header")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    let s = b.get(at..at + 8).context("truncated ELF header")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// Checks `bytes` is a little-endian x86-64 ELF executable and reports its linkage.
pub fn inspect(bytes: &[u8]) -> Result<Linkage> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        bail!("not an ELF file (the Functions Linux workers need a Linux binary)");
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let machine = u16_at(bytes, 18)?;
    if machine != EM_X86_64 {
        bail!("ELF machine {machine:#x} is not x86-64 (the Functions Linux workers are x86-64)");
    }
    let phoff = usize::try_from(u64_at(bytes, 32)?).context("program header offset")?;
    let phentsize = usize::from(u16_at(bytes, 54)?);
    let phnum = usize::from(u16_at(bytes, 56)?);
    let mut interpreter = None;
    for i in 0..phnum {
        let ph =
            i.checked_mul(phentsize).and_then(|o| o.checked_add(phoff)).context("program header offset overflows")?;
        if ph.checked_add(40).is_none_or(|end| end > bytes.len()) {
            bail!("program header {i} lies outside the file");
        }
        if u32_at(bytes, ph)? == PT_INTERP {
            let off = usize::try_from(u64_at(bytes, ph + 8)?).context("interpreter offset")?;
            let len = usize::try_from(u64_at(bytes, ph + 32)?).context("interpreter size")?;
            let end = off.checked_add(len).context("interpreter size overflows")?;
            let raw = bytes.get(off..end).context("interpreter outside the file")?;
            interpreter = Some(String::from_utf8_lossy(raw).trim_end_matches('\0').to_owned());
        }
    }
    let glibc = if interpreter.is_some() { newest_glibc(bytes) } else { None };
    Ok(Linkage { interpreter, glibc })
}

/// The newest `GLIBC_major.minor` version string in the binary's dynamic string table.
fn newest_glibc(bytes: &[u8]) -> Option<(u32, u32)> {
    const NEEDLE: &[u8] = b"GLIBC_";
    let mut best: Option<(u32, u32)> = None;
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let start = i + pos + NEEDLE.len();
        let digits = |from: usize| -> (Option<u32>, usize) {
            let end = bytes[from..].iter().position(|b| !b.is_ascii_digit()).map_or(bytes.len(), |n| from + n);
            (std::str::from_utf8(&bytes[from..end]).ok().and_then(|s| s.parse().ok()), end)
        };
        if let (Some(major), end) = digits(start)
            && bytes.get(end) == Some(&b'.')
            && let (Some(minor), _) = digits(end + 1)
        {
            best = best.max(Some((major, minor)));
        }
        i = start;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_glibc_version() {
        let blob = b"\0GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_2.17\0GLIBC_PRIVATE\0";
        assert_eq!(newest_glibc(blob), Some((2, 34)));
        assert_eq!(newest_glibc(b"no versions here"), None);
    }

    #[test]
    fn refuses_what_is_not_an_x86_64_elf() {
        assert!(inspect(b"#!/bin/sh\n").unwrap_err().to_string().contains("not an ELF"));
        let mut arm = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        arm.resize(64, 0);
        arm[18] = 0xb7; // aarch64
        assert!(inspect(&arm).unwrap_err().to_string().contains("not x86-64"));
    }

    proptest::proptest! {
        /// Any bytes: an answer or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = inspect(&bytes);
            let _ = newest_glibc(&bytes);
        }

        /// A real binary cut short or with a scribbled header: still no panic.
        #[test]
        fn damaged_binaries_never_panic(cut in 0usize..4096, at in 16usize..64, byte in proptest::prelude::any::<u8>()) {
            let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
            let mut damaged = me[..cut.min(me.len())].to_vec();
            if let Some(b) = damaged.get_mut(at) {
                *b = byte;
            }
            let _ = inspect(&damaged);
        }
    }

    #[test]
    fn reads_the_running_test_binary() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let linkage = inspect(&me).unwrap();
        if let Some(interp) = &linkage.interpreter {
            assert!(interp.contains("ld-linux") || interp.contains("ld-musl"), "{interp}");
        }
    }
}
