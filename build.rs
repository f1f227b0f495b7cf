//! Gives the shared library its versioned soname, `libtiermalloc.so.0` (major version 0), as
//! the allocators users know do (`libjemalloc.so.2`, `libmimalloc.so.2`): a program linked with
//! `-ltiermalloc` then records `libtiermalloc.so.0` and keeps working across compatible
//! updates. Cargo still writes the file as `libtiermalloc.so`, which `LD_PRELOAD` and `dlopen`
//! take by path; `install.sh` adds the `libtiermalloc.so.0` link that the loader looks up.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libtiermalloc.so.{major}");
    // The code a typical program runs goes first in the text (link/hot_text.ld says why).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets the manifest dir");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{manifest}/link/hot_text.ld");
    // Its 64 KiB window at the same 64 KiB boundary in the file as in memory: the kernel maps a
    // file's large page-cache folios whole, and folios are aligned in the file. Not 2 MiB:
    // lld then leaves 2 MiB of address space between segments, 6 MiB more in every process
    // (c-tests/address_limit.c's 8 MiB block under RLIMIT_AS 64 MiB failed).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,max-page-size=0x10000");
    println!("cargo:rerun-if-changed=link/hot_text.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
