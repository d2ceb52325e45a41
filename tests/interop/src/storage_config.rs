//! `ConfigV2` documents for the storage layer, as nydusd takes them (`--config`).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result};
use nydus_api::ConfigV2;
use serde_json::{json, Value};

/// The cache and RAFS parts shared by every backend: a file cache (RAFS v6 requires a local
/// cache) whose `validate` checks each chunk's digest when it is read, xattrs on.
fn with_backend(backend: Value, work_dir: &Path, rafs_validate: bool) -> Result<Arc<ConfigV2>> {
    let doc = json!({
        "version": 2,
        "id": "interop",
        "backend": backend,
        "cache": {
            "type": "filecache",
            "validate": true,
            "filecache": {"work_dir": work_dir.to_str().context("non-UTF-8 work dir")?},
        },
        "rafs": {"mode": "direct", "validate": rafs_validate, "enable_xattr": true},
    });
    let cfg = ConfigV2::from_str(&doc.to_string()).context("invalid nydus configuration")?;
    cfg.internal.set_blob_accessible(true);
    Ok(Arc::new(cfg))
}

/// Blobs read from files `DIR/<blob id>` (the localfs backend).
pub fn localfs(blob_dir: &Path, work_dir: &Path, rafs_validate: bool) -> Result<Arc<ConfigV2>> {
    let dir = blob_dir.to_str().context("non-UTF-8 blob dir")?;
    with_backend(json!({"type": "localfs", "localfs": {"dir": dir}}), work_dir, rafs_validate)
}

/// Blobs fetched from a registry repository (`http://HOST/v2/REPO/blobs/sha256:<blob id>`).
pub fn registry(scheme: &str, host: &str, repo: &str, work_dir: &Path) -> Result<Arc<ConfigV2>> {
    with_backend(
        json!({"type": "registry", "registry": {"scheme": scheme, "host": host, "repo": repo}}),
        work_dir,
        false,
    )
}
