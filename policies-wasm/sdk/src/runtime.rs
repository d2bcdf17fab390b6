//! What a `no_std` policy needs from the SDK: the allocator and its `cabi_realloc` export,
//! `memcmp`, and a panic handler.
//!
//! A policy built with std imports about thirty WASI functions it never calls (stdio, the
//! environment, exit: std's panic and startup paths), and every import is a function the host
//! links and every instantiation wires up again. A policy built `no_std` imports nothing, which
//! took a fifth off a warm decision through three example policies. [`no_std_runtime!`](crate::no_std_runtime) gives
//! such a policy what std would have.

/// Defines the global allocator and the panic handler of a `no_std` policy built for
/// `wasm32`; expands to nothing elsewhere (the host target's unit tests use std). Use it once,
/// in a policy crate that has `#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]`.
///
/// A panic traps: the host reports it as the policy's failure, and its `failurePolicy`
/// decides.
#[macro_export]
macro_rules! no_std_runtime {
    () => {
        #[cfg(all(target_arch = "wasm32", not(test)))]
        #[global_allocator]
        static ALLOCATOR: $crate::runtime::Allocator = $crate::runtime::Allocator::new();

        /// The canonical ABI's allocator export, which wasi-libc gives a std build.
        #[cfg(all(target_arch = "wasm32", not(test)))]
        #[unsafe(export_name = "cabi_realloc")]
        unsafe extern "C" fn cabi_realloc(
            old_ptr: *mut u8,
            old_len: usize,
            align: usize,
            new_len: usize,
        ) -> *mut u8 {
            // SAFETY: the host calls it as the canonical ABI specifies.
            unsafe { $crate::runtime::realloc(old_ptr, old_len, align, new_len) }
        }

        /// libc's, which a `no_std` build does not link: byte comparisons (`==` on strings)
        /// call it.
        #[cfg(all(target_arch = "wasm32", not(test)))]
        #[unsafe(no_mangle)]
        unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
            // SAFETY: the caller passes two readable ranges of `len` bytes, as for libc's.
            unsafe { $crate::runtime::compare(a, b, len) }
        }

        #[cfg(all(target_arch = "wasm32", not(test)))]
        #[unsafe(no_mangle)]
        unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
            // SAFETY: as for `memcmp`.
            unsafe { $crate::runtime::compare(a, b, len) }
        }

        #[cfg(all(target_arch = "wasm32", not(test)))]
        #[panic_handler]
        fn panic(_: &::core::panic::PanicInfo<'_>) -> ! {
            ::core::arch::wasm32::unreachable()
        }
    };
}

#[cfg(target_arch = "wasm32")]
pub use bump::Allocator;

/// The allocator of [`no_std_runtime!`](crate::no_std_runtime): a bump allocator.
///
/// Every policy call runs in a fresh instance that is thrown away after it, so nothing needs to
/// be freed for reuse: the heap only grows, from the end of the module's data to the end of its
/// initial memory, then by `memory.grow`. That first stretch matters: growing a memory is a
/// trip to the host and a change of page protections on every call, and a general allocator
/// (dlmalloc) grows on its first allocation. Freeing or growing the newest allocation is done
/// in place, which covers a `String` or `Vec` being built.
#[cfg(target_arch = "wasm32")]
mod bump {
    use core::alloc::{GlobalAlloc, Layout};
    use core::arch::wasm32;
    use core::cell::Cell;
    use core::ptr;

    const PAGE: usize = 65536;

    unsafe extern "C" {
        /// Where the linker put the end of the data and stack: the heap starts here.
        static __heap_base: u8;
    }

    pub struct Allocator {
        /// The next free byte; 0 until the first allocation.
        next: Cell<usize>,
        /// The newest allocation, which may be freed or grown in place.
        last: Cell<usize>,
    }

    // SAFETY: a policy is single-threaded wasm32 (no threads proposal): no two calls overlap.
    unsafe impl Sync for Allocator {}

    impl Allocator {
        #[allow(clippy::new_without_default)]
        pub const fn new() -> Self {
            Self {
                next: Cell::new(0),
                last: Cell::new(0),
            }
        }

        /// Reserves `size` bytes at `align`; null when memory cannot grow (the host's cap).
        fn bump(&self, size: usize, align: usize) -> *mut u8 {
            let mut next = self.next.get();
            if next == 0 {
                next = &raw const __heap_base as usize;
            }
            let Some(start) = next.checked_next_multiple_of(align) else {
                return ptr::null_mut();
            };
            let Some(end) = start.checked_add(size) else {
                return ptr::null_mut();
            };
            let limit = wasm32::memory_size(0) * PAGE;
            if end > limit {
                let pages = (end - limit).div_ceil(PAGE);
                if wasm32::memory_grow(0, pages) == usize::MAX {
                    return ptr::null_mut();
                }
            }
            self.next.set(end);
            self.last.set(start);
            start as *mut u8
        }
    }

    unsafe impl GlobalAlloc for Allocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.bump(layout.size(), layout.align())
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            if ptr as usize == self.last.get() {
                self.next.set(ptr as usize);
                self.last.set(0);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if ptr as usize == self.last.get() {
                // The newest allocation: give back its end and take it again at the new size.
                self.next.set(ptr as usize);
                let grown = self.bump(new_size, layout.align());
                if grown.is_null() {
                    self.next.set(ptr as usize + layout.size());
                    self.last.set(ptr as usize);
                }
                // Same start: `bump` aligned an already aligned address to itself.
                return grown;
            }
            let grown = self.bump(new_size, layout.align());
            if !grown.is_null() {
                // SAFETY: both are live and do not overlap (the new one is past the old).
                unsafe { ptr::copy_nonoverlapping(ptr, grown, layout.size().min(new_size)) };
            }
            grown
        }
    }
}

/// `memcmp` for [`no_std_runtime!`](crate::no_std_runtime): the sign of the first differing byte.
///
/// # Safety
/// `a` and `b` must each be readable for `len` bytes.
#[cfg(target_arch = "wasm32")]
#[inline(never)]
pub unsafe fn compare(a: *const u8, b: *const u8, len: usize) -> i32 {
    let mut i = 0;
    while i < len {
        // SAFETY: `i < len`, and the caller vouches for `len` bytes of each.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `cabi_realloc` for [`no_std_runtime!`](crate::no_std_runtime), as wit-bindgen's own runtime
/// writes it for targets without wasi-libc: a failed allocation (the host's memory cap) traps.
///
/// # Safety
/// As the canonical ABI's `cabi_realloc`: `old_ptr` was allocated with `old_len` and `align`,
/// or `old_len` is 0; `align` is a power of two.
#[cfg(target_arch = "wasm32")]
pub unsafe fn realloc(old_ptr: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};

    let ptr = if old_len == 0 {
        if new_len == 0 {
            return align as *mut u8;
        }
        // SAFETY: the caller's `align` is a power of two; `new_len` is not 0.
        unsafe { alloc(Layout::from_size_align_unchecked(new_len, align)) }
    } else {
        // SAFETY: the caller allocated `old_ptr` with this layout.
        unsafe {
            realloc(
                old_ptr,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable();
    }
    ptr
}
