//! `rafs-check BOOTSTRAP --blob-dir DIR`: read an image the way nydusd does and print its tree.
//!
//! 1. `RafsSuper::load_from_file` with `rafs.validate` on (superblock, extended superblock, blob
//!    and device tables, chunk tables), then every inode through `RafsInode::validate` and every
//!    chunk of every regular file through the inode's chunk lookup.
//! 2. The real RAFS filesystem (`nydus_rafs::fs::Rafs`, the `FileSystem` nydusd serves over FUSE)
//!    on the real storage layer (localfs backend over `DIR`, a file cache with chunk validation
//!    in a temporary directory): `readdir`, `lookup`, `readlink`, `listxattr`/`getxattr` and
//!    `read` of every regular file's bytes.
//!
//! Output (stdout): one JSON object `{"blobs": [...], "entries": [...]}`; byte strings (paths,
//! symlink targets, xattr names and values) are hex, as they need not be UTF-8.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use nydus_interop::{args, fusefs, hex, storage_config};
use nydus_rafs::fs::Rafs;
use nydus_rafs::metadata::RafsSuper;
use serde_json::{json, Value};

fn main() {
    if let Err(e) = run() {
        eprintln!("rafs-check: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut a = args::Args::from_env("rafs-check BOOTSTRAP --blob-dir DIR")?;
    let blob_dir = a.required("--blob-dir")?;
    let bootstrap = PathBuf::from(a.positional()?);
    a.finish()?;

    let work = tempdir()?;
    let result = check(&bootstrap, Path::new(&blob_dir), &work);
    let _ = std::fs::remove_dir_all(&work);
    let out = result?;
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("rafs-check-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}

fn check(bootstrap: &Path, blob_dir: &Path, work: &Path) -> Result<Value> {
    // Step 1: the loader with validation on, then every inode and chunk reference.
    let validating = storage_config::localfs(blob_dir, work, true)?;
    let (sb, _reader) = RafsSuper::load_from_file(bootstrap, validating, false)
        .with_context(|| format!("RafsSuper::load_from_file({})", bootstrap.display()))?;
    let max_ino = sb.get_max_ino();
    let chunk_size = sb.meta.chunk_size as u64;
    let mut inodes = 0u64;
    // The mtime each inode stores, to tell apart what the filesystem substitutes (see below).
    let mut stored_mtimes: HashMap<Vec<u8>, (u64, u32)> = HashMap::new();
    sb.walk_directory(sb.superblock.root_ino(), None::<&Path>, &mut |inode, path| {
        inodes += 1;
        let attr = inode.get_attr();
        stored_mtimes.insert(path.as_os_str().as_bytes().to_vec(), (attr.mtime, attr.mtimensec));
        inode
            .validate(max_ino, chunk_size)
            .with_context(|| format!("inode {} ({})", inode.ino(), path.display()))?;
        if inode.is_reg() {
            for idx in 0..inode.get_chunk_count() {
                inode
                    .get_chunk_info(idx)
                    .with_context(|| format!("chunk {idx} of {}", path.display()))?;
            }
        }
        Ok(())
    })?;
    let blobs: Vec<Value> = sb
        .superblock
        .get_blob_infos()
        .iter()
        .map(|b| {
            json!({
                "id": b.blob_id(),
                "compressor": format!("{}", b.compressor()),
                "digester": format!("{}", b.digester()),
                "chunk_count": b.chunk_count(),
                "compressed_size": b.compressed_size(),
                "uncompressed_size": b.uncompressed_size(),
                "features": b.features().bits(),
            })
        })
        .collect();
    drop(sb);

    // Step 2: the filesystem nydusd serves, reading data through the storage layer. (Rafs
    // refuses `rafs.validate` for v6; chunk digests are checked by the cache's `validate`.)
    let serving = storage_config::localfs(blob_dir, work, false)?;
    let mut fs = fusefs::open_rafs(&serving, bootstrap)?;
    let mut entries = Vec::new();
    fusefs::walk(&fs, &mut |path, entry| {
        let mut e = entry_json(&fs, path, entry)?;
        // `Rafs` serves an mtime of 0 as the mount time ("older rafs image doesn't include
        // mtime"); the stored value lets a comparison recognise exactly that substitution.
        if let Some((sec, nsec)) = stored_mtimes.get(path) {
            e["stored_mtime"] = json!([sec, nsec]);
        }
        entries.push(e);
        Ok(())
    })?;
    let _ = fs.destroy();

    if entries.len() as u64 != inodes {
        bail!(
            "the loader walked {inodes} inodes but the filesystem served {} entries",
            entries.len()
        );
    }
    Ok(json!({"blobs": blobs, "entries": entries}))
}

fn entry_json(fs: &Rafs, path: &[u8], entry: &fuse_backend_rs::api::filesystem::Entry) -> Result<Value> {
    let st = &entry.attr;
    let kind = fusefs::kind_of(st.st_mode)?;
    let ino = entry.inode;
    let mut out = json!({
        "path": hex::encode(path),
        "kind": kind,
        "ino": st.st_ino,
        "mode": st.st_mode & 0o7777,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "mtime": st.st_mtime,
        "mtime_nsec": st.st_mtime_nsec,
        "nlink": st.st_nlink,
        "rdev": [libc::major(st.st_rdev), libc::minor(st.st_rdev)],
        "xattrs": fusefs::xattrs(fs, ino)?
            .into_iter()
            .map(|(k, v)| (hex::encode(&k), Value::from(hex::encode(&v))))
            .collect::<serde_json::Map<_, _>>(),
    });
    match kind {
        "symlink" => out["target"] = Value::from(hex::encode(&fusefs::readlink(fs, ino)?)),
        "reg" => {
            let (size, digest) = fusefs::read_sha256(fs, ino, st.st_size as u64)
                .with_context(|| format!("reading {}", String::from_utf8_lossy(path)))?;
            out["read_size"] = Value::from(size);
            out["sha256"] = Value::from(digest);
        }
        _ => {}
    }
    Ok(out)
}
