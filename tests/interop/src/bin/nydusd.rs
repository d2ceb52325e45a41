//! `nydusd fuse --mountpoint DIR --config FILE --bootstrap FILE --apisock SOCK [...]`: the
//! subset of nydusd that nydus-snapshotter drives in its dedicated fusedev mode. The snapshotter
//! starts it with that command line, polls `GET /api/v1/daemon` on the API socket until the
//! state is `RUNNING`, and serves the mountpoint to containerd as a snapshot's lower layer.
//!
//! The filesystem is the real one (nydus-rafs' `Rafs` over fuse-backend-rs, on nydus-storage
//! with the backend and cache of the snapshotter's configuration); the API is the part of
//! nydusd's HTTP API the snapshotter needs to start and watch a daemon. Other flags the
//! snapshotter passes (thread count, log level, supervisor, ...) are accepted and ignored.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use nydus_api::ConfigV2;
use nydus_interop::{fuseserve, fusefs};
use serde_json::json;

/// Flags of nydusd that take a value and that this daemon ignores.
const IGNORED_VALUE_FLAGS: &[&str] = &[
    "--thread-num",
    "--log-level",
    "--log-file",
    "--log-rotation-size",
    "--supervisor",
    "--id",
    "--prefetch-files",
    "--backend-source",
    "--fscache",
    "--fscache-threads",
    "--failover-policy",
];

fn main() {
    if let Err(e) = run() {
        eprintln!("nydusd: {e:#}");
        std::process::exit(1);
    }
}

struct Options {
    mountpoint: PathBuf,
    config: PathBuf,
    bootstrap: PathBuf,
    apisock: PathBuf,
    id: String,
}

fn parse() -> Result<Options> {
    let mut args = std::env::args().skip(1).peekable();
    let (mut mountpoint, mut config, mut bootstrap, mut apisock) = (None, None, None, None);
    let mut id = String::from("nydusd");
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args.next().with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "fuse" => {}
            "--version" | "-V" => {
                println!("nydusd (nydus-exporter interop harness) {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--mountpoint" => mountpoint = Some(PathBuf::from(value()?)),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--bootstrap" => bootstrap = Some(PathBuf::from(value()?)),
            "--apisock" => apisock = Some(PathBuf::from(value()?)),
            "--id" => id = value()?,
            f if IGNORED_VALUE_FLAGS.contains(&f) => {
                value()?;
            }
            other => bail!("unsupported argument {other:?}"),
        }
    }
    Ok(Options {
        mountpoint: mountpoint.context("--mountpoint is required")?,
        config: config.context("--config is required")?,
        bootstrap: bootstrap.context("--bootstrap is required (dedicated mode only)")?,
        apisock: apisock.context("--apisock is required")?,
        id,
    })
}

fn run() -> Result<()> {
    let opts = parse()?;
    let text = std::fs::read_to_string(&opts.config)
        .with_context(|| format!("reading {}", opts.config.display()))?;
    let cfg = ConfigV2::from_str(&text).context("nydusd configuration")?;
    cfg.internal.set_blob_accessible(true);
    let cfg = Arc::new(cfg);
    let rafs = fusefs::open_rafs(&cfg, &opts.bootstrap)?;

    let running = Arc::new(AtomicBool::new(false));
    let _ = std::fs::remove_file(&opts.apisock);
    let listener = UnixListener::bind(&opts.apisock)
        .with_context(|| format!("binding {}", opts.apisock.display()))?;
    {
        let running = running.clone();
        let id = opts.id.clone();
        // One thread per connection: the snapshotter's liveness monitor keeps a connection
        // open without a request, to learn from its hangup that the daemon died.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (id, running) = (id.clone(), running.clone());
                std::thread::spawn(move || answer(stream, &id, running.load(Ordering::SeqCst)));
            }
        });
    }
    let result = fuseserve::serve(rafs, &opts.mountpoint, || running.store(true, Ordering::SeqCst));
    let _ = std::fs::remove_file(&opts.apisock);
    result
}

/// One HTTP/1.1 exchange on the API socket (the snapshotter's Go client; `Connection: close`).
fn answer(stream: UnixStream, id: &str, running: bool) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length];
    std::io::Read::read_exact(&mut reader, &mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, reply) = match (method, path) {
        ("GET", "/api/v1/daemon") => (
            "200 OK",
            json!({
                "id": id,
                "version": {
                    "package_ver": env!("CARGO_PKG_VERSION"),
                    "git_commit": "",
                    "build_time": "",
                    "profile": "release",
                    "rustc": "",
                },
                "state": if running { "RUNNING" } else { "INIT" },
            }),
        ),
        // Metrics: the snapshotter reads the blob cache's before it reports a mount; the
        // counters of nydus-utils when there is one cache, else an empty set.
        ("GET", p) if p.starts_with("/api/v1/metrics") => (
            "200 OK",
            nydus_utils::metrics::export_blobcache_metrics(&None)
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_else(|| json!({})),
        ),
        // Start/exit requests: the daemon starts serving by itself and stops on umount.
        ("PUT", "/api/v1/daemon/start") | ("PUT", "/api/v1/daemon/exit") => ("204 No Content", json!(null)),
        _ => (
            "501 Not Implemented",
            json!({"code": "Unsupported", "message": format!("{method} {path} is not supported")}),
        ),
    };
    let payload = if reply.is_null() { String::new() } else { reply.to_string() };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    )?;
    Ok(())
}
