//! What regcache asks of the operating system beyond tokio's sockets: the machine's name, and
//! files written whole (a crash never leaves half a key or a key with another certificate).
//!
//! May import: nothing else of the crate.

use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// The machine's host name (`localhost` when it has none): for the CA subject, the start
/// banner, and lease holders' names.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Writes `bytes` to a temporary file created with `mode` (0600 for a private key), synced,
/// then renamed over `path`.
///
/// # Errors
/// The first I/O failure.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes).and_then(|()| f.sync_all())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}
