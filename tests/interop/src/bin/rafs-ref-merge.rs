//! `rafs-ref-merge -o TARGET [--blob-digests D1,D2,..] [--blob-sizes S1,..]
//! [--blob-toc-digests T1,..] [--blob-toc-sizes Z1,..] [--original-blob-ids I1,..] [--prefetch-policy none|fs] BOOT...`:
//! nydus-builder's `Merger::merge` over per-layer bootstraps (lowest first), as
//! `nydus-image merge` runs it for nydusify and the nydus-snapshotter converter.
//! Prints `{"blob_ids": [...]}`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use nydus_api::ConfigV2;
use nydus_builder::{ArtifactStorage, BuildContext, Merger, Prefetch, PrefetchPolicy};
use nydus_interop::args::Args;
use serde_json::json;

fn main() {
    if let Err(e) = run() {
        eprintln!("rafs-ref-merge: {e:#}");
        std::process::exit(1);
    }
}

fn list(v: Option<String>) -> Option<Vec<String>> {
    v.map(|s| s.split(',').map(|i| i.trim().to_string()).collect())
}

fn numbers(v: Option<String>) -> Result<Option<Vec<u64>>> {
    match list(v) {
        None => Ok(None),
        Some(items) => Ok(Some(
            items
                .iter()
                .map(|i| i.parse::<u64>().with_context(|| format!("bad number {i:?}")))
                .collect::<Result<_>>()?,
        )),
    }
}

fn run() -> Result<()> {
    let mut a = Args::from_env(
        "rafs-ref-merge -o TARGET [--blob-digests ..] [--blob-sizes ..] [--blob-toc-digests ..] \
         [--blob-toc-sizes ..] [--original-blob-ids ..] [--chunk-dict BOOT] [--prefetch-policy P] BOOT...",
    )?;
    let target = PathBuf::from(a.required("-o")?);
    let blob_digests = list(a.optional("--blob-digests")?);
    let blob_sizes = numbers(a.optional("--blob-sizes")?)?;
    let toc_digests = list(a.optional("--blob-toc-digests")?);
    let toc_sizes = numbers(a.optional("--blob-toc-sizes")?)?;
    let original_ids = list(a.optional("--original-blob-ids")?);
    let chunk_dict = a.optional("--chunk-dict")?.map(PathBuf::from);
    // nydusify runs merges with `--prefetch-policy fs` and the patterns on stdin.
    let policy: PrefetchPolicy = a
        .optional("--prefetch-policy")?
        .unwrap_or("none".into())
        .parse()?;
    let sources: Vec<PathBuf> = a.positionals().into_iter().map(PathBuf::from).collect();

    // As nydus-image merge without --config: a default configuration, blobs not accessible.
    let config = Arc::new(ConfigV2::default());
    config.internal.set_blob_accessible(false);
    let mut ctx = BuildContext {
        prefetch: Prefetch::new(policy)?,
        ..Default::default()
    };
    ctx.configuration = config.clone();
    let output = Merger::merge(
        &mut ctx,
        None,
        sources,
        blob_digests,
        original_ids,
        blob_sizes,
        toc_digests,
        toc_sizes,
        ArtifactStorage::SingleFile(target),
        chunk_dict,
        config,
    )?;
    println!("{}", json!({"blob_ids": output.blobs}));
    Ok(())
}
