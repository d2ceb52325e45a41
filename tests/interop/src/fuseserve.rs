//! Serving a RAFS filesystem over FUSE the way nydusd's fusedev daemon does: fuse-backend-rs'
//! `Vfs` with the filesystem mounted at "/", a `Server`, a `FuseSession` on /dev/fuse.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::transport::FuseSession;
use nydus_rafs::fs::Rafs;

/// Mount `rafs` at `mountpoint`, call `on_mounted`, and serve requests on this thread until the
/// mountpoint is unmounted.
pub fn serve(rafs: Rafs, mountpoint: &Path, on_mounted: impl FnOnce()) -> Result<()> {
    let vfs = Arc::new(Vfs::new(VfsOptions::default()));
    vfs.mount(Box::new(rafs), "/")
        .map_err(|e| anyhow!("vfs mount: {e:?}"))?;
    let mut session = FuseSession::new(mountpoint, "rafs", "", true)
        .map_err(|e| anyhow!("fuse session: {e:?}"))?;
    session.mount().map_err(|e| anyhow!("fuse mount: {e:?}"))?;
    let server = Server::new(vfs.clone());
    let mut channel = session
        .new_channel()
        .map_err(|e| anyhow!("fuse channel: {e:?}"))?;
    on_mounted();
    loop {
        match channel.get_request() {
            Ok(Some((reader, writer))) => {
                if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
                    eprintln!("fuse request failed: {e:?}");
                }
            }
            Ok(None) => break,
            // The kernel closing the session on umount shows up as an epoll error/hangup on
            // /dev/fuse; nydusd's fusedev loop ends on a session failure the same way.
            Err(fuse_backend_rs::transport::Error::SessionFailure(_)) if !is_mounted(mountpoint) => {
                break
            }
            Err(e) => {
                let _ = session.umount();
                return Err(anyhow!("fuse channel: {e:?}"));
            }
        }
    }
    let _ = session.umount();
    Ok(())
}

/// Whether `path` is still a mountpoint (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let target = match path.canonicalize() {
        Ok(p) => p,
        Err(_) => return false,
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|m| Path::new(m) == target)
        })
        .unwrap_or(false)
}
