//! Build script of the `drover` binary: links a release build with its debug sections
//! compressed.
//!
//! A release build keeps line tables for drover's own crates (see `[profile.release]` in
//! Cargo.toml) so that a panic's backtrace names drover's file:line. Uncompressed they are about
//! 31 MB of a 123 MB binary; zlib-compressed, about 6 MB (`-O2`: lld compresses at zlib level 6
//! instead of 1, and merges string tails). zlib, not zstd: the standard library's backtrace reads
//! zlib-compressed sections, and with zstd prints function names without file:line. Linux only
//! (GNU ld, gold and lld take both flags; macOS's linker does not), and release only (test
//! binaries link faster without it).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if linux && release {
        println!("cargo::rustc-link-arg-bins=-Wl,-O2,--compress-debug-sections=zlib");
    }
}
