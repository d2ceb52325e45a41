//! `rafs-ref-build LAYER.tar -o DIR [--chunk-size N] [--compressor zstd|lz4_block|none]
//! [--digester blake3|sha256] [--prefetch-policy none|fs] [--whiteout-spec oci|none]`
//! (fs: patterns on stdin): the reference data blob for one layer tar, built by
//! nydus-builder exactly as `nydus-image create --type tar-rafs --blob-inline-meta
//! --features blob-toc --blob DIR/blob` does (nydus-image's `create()`: aligned chunks for v6,
//! explicit uid/gid (not `--repeatable`), OCI whiteouts, no prefetch, RAFS v6, batch size 0,
//! a default configuration with cache validation and blobs accessible).
//!
//! Writes `DIR/blob` (chunks, chunk info, the inlined bootstrap and the ToC) and prints
//! `{"blob_id": ..., "blob_size": ...}`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use nydus_api::ConfigV2;
use nydus_builder::attributes::Attributes;
use nydus_builder::{
    ArtifactStorage, BlobManager, BootstrapManager, BuildContext, Builder, ConversionType,
    Features, Prefetch, PrefetchPolicy, TarballBuilder, WhiteoutSpec,
};
use nydus_interop::args::Args;
use nydus_rafs::metadata::RafsVersion;
use nydus_utils::{compress, digest};
use serde_json::json;

fn main() {
    if let Err(e) = run() {
        eprintln!("rafs-ref-build: {e:#}");
        std::process::exit(1);
    }
}

fn parse_size(s: &str) -> Result<u32> {
    let v = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16)?,
        None => s.parse()?,
    };
    Ok(v)
}

fn run() -> Result<()> {
    let mut a = Args::from_env(
        "rafs-ref-build LAYER.tar -o DIR [--chunk-size N] [--compressor C] [--digester D]",
    )?;
    let out_dir = PathBuf::from(a.required("-o")?);
    let chunk_size = parse_size(&a.optional("--chunk-size")?.unwrap_or("0x100000".into()))?;
    let compressor: compress::Algorithm = a
        .optional("--compressor")?
        .unwrap_or("zstd".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("--compressor: {e:?}"))?;
    let digester: digest::Algorithm = a
        .optional("--digester")?
        .unwrap_or("blake3".into())
        .parse()
        .map_err(|e| anyhow::anyhow!("--digester: {e:?}"))?;
    // nydusify and the snapshotter's converter run `--prefetch-policy fs` with the patterns on
    // stdin ("/" by default); nydus-image's own default is `none`.
    let policy: PrefetchPolicy = a
        .optional("--prefetch-policy")?
        .unwrap_or("none".into())
        .parse()?;
    // nydus-image's default is oci; nydus-snapshotter's converter passes none (whiteouts stay
    // ordinary files in the layer bootstrap and take effect in the merge).
    let whiteout_spec: WhiteoutSpec = a
        .optional("--whiteout-spec")?
        .unwrap_or("oci".into())
        .parse()?;
    let source = PathBuf::from(a.positional()?);
    a.finish()?;

    std::fs::create_dir_all(&out_dir)?;
    let blob_path = out_dir.join("blob");
    let conversion = ConversionType::TarToRafs;
    let mut ctx = BuildContext::new(
        String::new(), // --blob-id: none for tar-rafs
        true,          // aligned chunks: always for RAFS v6 unless tarfs
        0,             // --blob-offset
        compressor,
        digester,
        true, // explicit uid/gid: !--repeatable
        whiteout_spec,
        conversion,
        source,
        Prefetch::new(policy)?, // patterns are read from stdin unless the policy is none
        Some(ArtifactStorage::SingleFile(blob_path.clone())),
        None,
        true, // --blob-inline-meta
        Features::try_from("blob-toc")?,
        false, // --encrypt
        Attributes::default(),
    );
    ctx.set_fs_version(RafsVersion::V6);
    ctx.set_chunk_size(chunk_size);
    ctx.set_batch_size(0);
    let mut config = ConfigV2::default();
    if let Some(cache) = config.cache.as_mut() {
        cache.cache_validate = true;
    }
    config.internal.set_blob_accessible(true);
    ctx.set_configuration(Arc::new(config));

    let mut blob_mgr = BlobManager::new(digester, false);
    let mut bootstrap_mgr = BootstrapManager::new(None, None);
    let output = TarballBuilder::new(conversion)
        .build(&mut ctx, &mut bootstrap_mgr, &mut blob_mgr)
        .context("build failed")?;
    println!(
        "{}",
        json!({"blob_ids": output.blobs, "blob_size": output.blob_size, "blob": blob_path})
    );
    Ok(())
}
