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

use anyhow::{bail, Context, Result};
use nydus_interop::args::Args;
use nydus_interop::{fuseserve, fusefs, storage_config};
use nydus_rafs::metadata::RafsSuper;
use serde_json::{json, Value};

fn main() {
    if let Err(e) = run() {
        eprintln!("rafs-mount: {e:#}");
        std::process::exit(1);
    }
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
    fuseserve::serve(rafs, &mountpoint, || eprintln!("mounted"))?;

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
