//! The `regcache` binary: parse the command line, install the one crypto provider, run the
//! command (see `regcache::cli`; `serve` builds the app, serves until a signal, then drains).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    keep_freed_heap_pages();
    let cli = regcache::cli::Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    regcache::cli::run(cli)
}

/// glibc's allocator hands memory back to the kernel once more than 128 KiB is free at the top
/// of a heap, or when a chunk it mapped on its own is freed; a cold blob frees and allocates
/// hyper's read buffers (up to 408 KiB each) thousands of times per GB, and every one of them
/// faulted freshly zeroed pages back in: 7 % of the cold path's CPU under perf, and 10 % more
/// throughput without it (bench/ANALYSIS.md). With chunks up to 4 MiB on the heap and up to
/// 16 MiB kept free there, those pages are reused; peak RSS moves by a few MiB (figure 5). An
/// operator's own `GLIBC_TUNABLES=glibc.malloc.…` wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_heap_pages() {
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.")) {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_heap_pages() {}
