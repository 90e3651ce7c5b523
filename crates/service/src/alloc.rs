//! jemalloc as a service binary's allocator ([`crate::jemalloc!`]).
//!
//! Why: freed connection memory goes back to the OS (glibc's malloc keeps it), and jemalloc's
//! per-thread caches make the many small allocations of a batch (frames, keys, records) cheaper
//! than glibc's arenas do under tokio's worker threads.

pub use tikv_jemallocator::Jemalloc;

/// jemalloc's options, as the C string it reads at start (`const char *malloc_conf`): a
/// background thread purges freed pages after about a second, busy or not. `_RJEM_MALLOC_CONF`
/// in the environment overrides them.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

impl MallocConf {
    /// The options every service runs with.
    pub const SERVICE: Self =
        Self(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000".as_ptr());
}

// SAFETY: it points at a static, immutable byte string.
unsafe impl Sync for MallocConf {}

/// Makes jemalloc the binary's global allocator, with [`MallocConf::SERVICE`]. Once, in a
/// binary's root module (a library never picks the allocator).
#[macro_export]
macro_rules! jemalloc {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::alloc::Jemalloc = $crate::alloc::Jemalloc;

        #[export_name = "_rjem_malloc_conf"]
        pub static MALLOC_CONF: $crate::alloc::MallocConf = $crate::alloc::MallocConf::SERVICE;
    };
}
