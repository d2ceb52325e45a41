//! The RAFS filesystem nydusd serves (`nydus_rafs::fs::Rafs`, a fuse-backend-rs `FileSystem`),
//! driven in-process through the same `FileSystem` calls the FUSE server makes.

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use fuse_backend_rs::api::filesystem::{
    Context, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyWriter,
};
use fuse_backend_rs::api::BackendFileSystem;
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;
use nydus_api::ConfigV2;
use nydus_rafs::fs::Rafs;
use sha2::{Digest, Sha256};

/// The size of each `read` request, as the kernel's FUSE client would send with max_read 1 MiB.
const READ_SIZE: u32 = 1 << 20;

/// `Rafs::new` + `import`, as nydusd mounts a RAFS instance (no prefetch unless configured).
pub fn open_rafs(cfg: &Arc<ConfigV2>, bootstrap: &Path) -> Result<Rafs> {
    let (mut rafs, reader) =
        Rafs::new(cfg, "interop", bootstrap).map_err(|e| anyhow!("Rafs::new: {e:?}"))?;
    rafs.import(reader, None)
        .map_err(|e| anyhow!("Rafs::import: {e:?}"))?;
    Ok(rafs)
}

pub fn kind_of(mode: u32) -> Result<&'static str> {
    Ok(match mode & libc::S_IFMT {
        libc::S_IFREG => "reg",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "chr",
        libc::S_IFBLK => "blk",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "sock",
        other => bail!("unknown file type {other:o}"),
    })
}

/// Depth-first walk from the root (the entry `mount()` gives the FUSE server), children in
/// directory order; `cb(path, entry)` for each path, the root being `/`.
pub fn walk(fs: &Rafs, cb: &mut dyn FnMut(&[u8], &Entry) -> Result<()>) -> Result<()> {
    let (root, _max_ino) = fs.mount().context("mount")?;
    walk_from(fs, b"/".to_vec(), &root, cb)
}

fn walk_from(
    fs: &Rafs,
    path: Vec<u8>,
    entry: &Entry,
    cb: &mut dyn FnMut(&[u8], &Entry) -> Result<()>,
) -> Result<()> {
    cb(&path, entry)?;
    if entry.attr.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Ok(());
    }
    let ctx = Context::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    fs.readdir(&ctx, entry.inode, 0, u32::MAX, 0, &mut |d| {
        if d.name != b"." && d.name != b".." {
            names.push(d.name.to_vec());
        }
        Ok(1)
    })
    .with_context(|| format!("readdir {}", String::from_utf8_lossy(&path)))?;
    for name in names {
        let cname = CString::new(name.clone())?;
        let child = fs
            .lookup(&ctx, entry.inode, &cname)
            .with_context(|| format!("lookup {:?}", String::from_utf8_lossy(&name)))?;
        if child.inode == 0 {
            bail!("readdir listed {:?} but lookup did not find it", String::from_utf8_lossy(&name));
        }
        let mut child_path = path.clone();
        if child_path != b"/" {
            child_path.push(b'/');
        }
        child_path.extend_from_slice(&name);
        walk_from(fs, child_path, &child, cb)?;
    }
    Ok(())
}

/// All xattrs of an inode (`listxattr` + `getxattr`), in the order the filesystem lists them.
pub fn xattrs(fs: &Rafs, ino: u64) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let ctx = Context::new();
    let names = match fs.listxattr(&ctx, ino, u32::MAX) {
        Ok(ListxattrReply::Names(buf)) => buf,
        Ok(ListxattrReply::Count(_)) => bail!("listxattr returned a count for a sized request"),
        // No xattr in the whole image: the filesystem reports xattrs as unsupported.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Ok(Vec::new()),
        Err(e) => return Err(e).context("listxattr"),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name.to_vec())?;
        match fs.getxattr(&ctx, ino, &cname, u32::MAX).context("getxattr")? {
            GetxattrReply::Value(v) => out.push((name.to_vec(), v)),
            GetxattrReply::Count(_) => bail!("getxattr returned a count for a sized request"),
        }
    }
    Ok(out)
}

pub fn readlink(fs: &Rafs, ino: u64) -> Result<Vec<u8>> {
    fs.readlink(&Context::new(), ino).context("readlink")
}

/// `open` + `read` until EOF; returns the number of bytes read and their sha256 (hex).
pub fn read_sha256(fs: &Rafs, ino: u64, size: u64) -> Result<(u64, String)> {
    let ctx = Context::new();
    fs.open(&ctx, ino, libc::O_RDONLY as u32, 0).context("open")?;
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    loop {
        let mut sink = Sink::default();
        let n = fs
            .read(&ctx, ino, 0, &mut sink, READ_SIZE, offset, None, 0)
            .with_context(|| format!("read at offset {offset}"))?;
        if n == 0 {
            break;
        }
        if n != sink.buf.len() {
            bail!("read returned {n} but produced {} bytes", sink.buf.len());
        }
        hasher.update(&sink.buf);
        offset += n as u64;
        if offset > size {
            bail!("read past the file size {size}");
        }
    }
    Ok((offset, format!("{:x}", hasher.finalize())))
}

/// A `ZeroCopyWriter` into memory: the storage layer fills the slices it is given, as it fills
/// the FUSE reply buffer in nydusd.
#[derive(Default)]
pub struct Sink {
    pub buf: Vec<u8>,
}

impl io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for Sink {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let mut tmp = vec![0u8; count];
        // SAFETY: `tmp` is owned here and not accessed by anything else while the slice lives.
        let slice = unsafe { FileVolatileSlice::from_mut_slice(&mut tmp) };
        let n = f.read_vectored_at_volatile(&[slice], off)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn available_bytes(&self) -> usize {
        READ_SIZE as usize
    }
}
