//! `rafs-mount BOOTSTRAP MOUNTPOINT (--blob-dir DIR | --registry http://HOST/REPO)
//! --work-dir DIR`: a minimal nydusd. The RAFS filesystem of nydus-rafs (`Rafs`, the one nydusd
//! mounts) over FUSE through fuse-backend-rs (`Vfs` + `Server` + `FuseSession`, as nydusd's
//! fusedev daemon drives them), on the storage layer of nydus-storage with the registry (or
//! localfs) backend and a file cache in `--work-dir`. No prefetch: data is fetched when read.
//!
//! Serves in the foreground until the mountpoint is unmounted (`umount MOUNTPOINT`), then
//! prints `{"blobs": {"<blob id>": {"read_count": N, "read_amount_total": BYTES}, ...}}`:
//! what the backend fetched, from nydus-utils' backend metrics. A line `mounted` goes to
//! stderr once the mount is live.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::api::{Vfs, VfsOptions};
use fuse_backend_rs::transport::FuseSession;
use nydus_interop::args::Args;
use nydus_interop::{fusefs, storage_config};
use nydus_rafs::metadata::RafsSuper;
use serde_json::{json, Value};

fn main() {
    if let Err(e) = run() {
        eprintln!("rafs-mount: {e:#}");
        std::process::exit(1);
    }
}

/// Whether `path` is still a mountpoint (listed in /proc/self/mountinfo).
fn is_mounted(path: &std::path::Path) -> bool {
    let target = match path.canonicalize() {
        Ok(p) => p,
        Err(_) => return false,
    };
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|m| std::path::Path::new(m) == target)
        })
        .unwrap_or(false)
}

fn run() -> Result<()> {
    let mut a = Args::from_env(
        "rafs-mount BOOTSTRAP MOUNTPOINT (--blob-dir DIR | --registry http://HOST/REPO) --work-dir DIR",
    )?;
    let blob_dir = a.optional("--blob-dir")?;
    let registry = a.optional("--registry")?;
    let work_dir = PathBuf::from(a.required("--work-dir")?);
    let bootstrap = PathBuf::from(a.positional()?);
    let mountpoint = PathBuf::from(a.positional()?);
    a.finish()?;
    std::fs::create_dir_all(&work_dir)?;

    let cfg = match (blob_dir, registry) {
        (Some(dir), None) => storage_config::localfs(dir.as_ref(), &work_dir, false)?,
        (None, Some(url)) => {
            let (scheme, rest) = url.split_once("://").context("--registry needs SCHEME://HOST/REPO")?;
            let (host, repo) = rest.split_once('/').context("--registry needs SCHEME://HOST/REPO")?;
            storage_config::registry(scheme, host, repo, &work_dir)?
        }
        _ => bail!("give exactly one of --blob-dir and --registry"),
    };
    let blob_ids: Vec<String> = {
        let (sb, _) = RafsSuper::load_from_file(&bootstrap, cfg.clone(), false)
            .with_context(|| format!("loading {}", bootstrap.display()))?;
        sb.superblock.get_blob_infos().iter().map(|b| b.blob_id()).collect()
    };

    let rafs = fusefs::open_rafs(&cfg, &bootstrap)?;
    let vfs = Arc::new(Vfs::new(VfsOptions::default()));
    vfs.mount(Box::new(rafs), "/")
        .map_err(|e| anyhow!("vfs mount: {e:?}"))?;

    let mut session = FuseSession::new(&mountpoint, "rafs", "", true)
        .map_err(|e| anyhow!("fuse session: {e:?}"))?;
    session.mount().map_err(|e| anyhow!("fuse mount: {e:?}"))?;
    let server = Server::new(vfs.clone());
    let mut channel = session
        .new_channel()
        .map_err(|e| anyhow!("fuse channel: {e:?}"))?;
    eprintln!("mounted");

    // One thread serves every request until the kernel ends the session (umount).
    loop {
        match channel.get_request() {
            Ok(Some((reader, writer))) => {
                if let Err(e) = server.handle_message(reader, writer.into(), None, None) {
                    eprintln!("rafs-mount: request failed: {e:?}");
                }
            }
            Ok(None) => break,
            // The kernel closing the session on umount shows up as an epoll error/hangup on
            // /dev/fuse; nydusd's fusedev loop ends on a session failure the same way.
            Err(fuse_backend_rs::transport::Error::SessionFailure(_)) if !is_mounted(&mountpoint) => break,
            Err(e) => {
                let _ = session.umount();
                return Err(anyhow!("fuse channel: {e:?}"));
            }
        }
    }
    let _ = session.umount();

    let mut blobs = serde_json::Map::new();
    for id in blob_ids {
        let metrics = nydus_utils::metrics::export_backend_metrics(&Some(id.clone()))
            .map(|s| serde_json::from_str::<Value>(&s).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        blobs.insert(
            id,
            json!({
                "read_count": metrics.get("read_count").cloned().unwrap_or(Value::from(0)),
                "read_amount_total": metrics.get("read_amount_total").cloned().unwrap_or(Value::from(0)),
            }),
        );
    }
    println!("{}", json!({ "blobs": blobs }));
    Ok(())
}
