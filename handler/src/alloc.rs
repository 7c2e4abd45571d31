//! The process's global allocator: jemalloc, configured for a small peak RSS.
//!
//! Per event the handler allocates and frees thousands of small strings and buffers
//! (decoded events, policy input and decision, outcomes, the audit record's and the
//! answer's JSON). With glibc malloc that was ≈ 20 % of the server's CPU under load;
//! jemalloc measured 10–25 % less CPU per event in one-run A/Bs (BENCHMARKS.md
//! "Throughput and memory", session 4). Its defaults (4 arenas per core, dirty pages kept
//! 10 s) raised the peak RSS under the throughput load from ≈ 33 MB to 38–41 MB, against
//! a 40 MB target; [`MALLOC_CONF`] brings it back to glibc's level at the same CPU gain:
//!
//! - `narenas:2`: two arenas (the runtime has one worker per core; threads beyond that —
//!   the blocking pool, the ledger's writer — share them);
//! - `dirty_decay_ms:1000`: freed pages go back to the OS after ≈ 1 s instead of 10 s;
//! - `muzzy_decay_ms:0`: and are not kept a second time as "muzzy" pages.
//!
//! The environment variable `_RJEM_MALLOC_CONF` (this build's prefixed name of
//! `MALLOC_CONF`) still overrides any of these for an experiment. C code (SQLite, libc)
//! keeps glibc's malloc: the Rust allocations are jemalloc's (the `_rjem_` symbols), the
//! rest of the process is unchanged.
//!
//! Three audited `unsafe` items: the exported options string, its `Sync`, and `mallctl`.

use std::ffi::c_char;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compiled-in options (see the module docs), read once at its initialisation.
pub const MALLOC_CONF: &std::ffi::CStr = c"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0";

/// A C `const char *`, shareable because it points at a `'static` C string.
#[repr(transparent)]
pub struct ConfPtr(*const c_char);

// SAFETY: the pointer refers to an immutable `'static` C string.
#[allow(unsafe_code)]
unsafe impl Sync for ConfPtr {}

/// jemalloc reads `malloc_conf` (prefixed `_rjem_` by tikv-jemalloc-sys) at start; this
/// definition replaces the library's weak, empty one.
#[allow(unsafe_code)] // exporting a symbol: jemalloc's documented way to set its options
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: ConfPtr = ConfPtr(MALLOC_CONF.as_ptr());

/// The allocator's options as it parsed them: (`opt.narenas`, `opt.dirty_decay_ms`,
/// `opt.muzzy_decay_ms`), to check that [`MALLOC_CONF`] took effect.
pub fn options() -> Result<(u32, isize, isize), String> {
    Ok((read::<u32>(c"opt.narenas")?, read::<isize>(c"opt.dirty_decay_ms")?, read::<isize>(c"opt.muzzy_decay_ms")?))
}

/// One jemalloc option by name; `T` must be the option's C type (`unsigned`, `ssize_t`).
fn read<T: Copy + Default>(name: &std::ffi::CStr) -> Result<T, String> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: `name` is NUL-terminated; `value` is a valid, writable `T` of `len` bytes,
    // the size jemalloc checks against the option's type (a mismatch is an error, EINVAL).
    #[allow(unsafe_code)]
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(name.as_ptr(), (&raw mut value).cast(), &raw mut len, std::ptr::null_mut(), 0)
    };
    if rc == 0 { Ok(value) } else { Err(format!("mallctl({name:?}) failed: error {rc}")) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_compiled_in_options_take_effect() {
        // Allocate first: jemalloc parses its options at its first use.
        let v = vec![0u8; 4096];
        drop(v);
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return; // an experiment's override; nothing to check
        }
        assert_eq!(super::options(), Ok((2, 1000, 0)));
    }
}
