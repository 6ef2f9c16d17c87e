//! `cpub deploy`: validate `cpub.toml` locally, pack the directory, upload it
//! with a progress bar (on a terminal), then follow the build the server
//! runs: its steps and output as they happen, then the version and URL.
//! `--detach` returns once the build started, with its id; Ctrl-C while
//! following stops following, not the build (it runs server-side). How the
//! upload shows: `progress.rs` (`CPUB_PROGRESS`).

mod progress;

use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use containerpub_wire::api::DeploymentStatus;
use containerpub_wire::manifest::Runtime;
use containerpub_wire::{CONTAINERFILE, MANIFEST_FILE, Manifest};
use indicatif::HumanBytes;
use tokio::io::AsyncReadExt;

use super::Context;
use crate::bundle;
use crate::client::{Client, DeployAnswer};

/// Upload chunk size.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function directory (holds cpub.toml).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Return as soon as the build started, printing its id (follow it
    /// with `cpub build-log ID -f`).
    #[arg(long)]
    detach: bool,
    /// Upload even when the bundle checks find errors (files that look like
    /// secrets, a binary for another architecture or dynamically linked, a
    /// bundle over the default size limits); they are printed as warnings.
    #[arg(long)]
    force: bool,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    let manifest = read_manifest(&args.dir)?;
    let name = manifest.name.as_str();
    let client = ctx.client()?;

    let temp = TempFile::create(name)?;
    let packed = {
        let file = temp.open_new()?;
        bundle::pack(&args.dir, BufWriter::new(file))
            .with_context(|| format!("cannot pack {}", args.dir.display()))?
    };
    check_bundle(&args.dir, &manifest, &packed)?;
    let len = std::fs::metadata(&temp.path)
        .with_context(|| format!("cannot stat {}", temp.path.display()))?
        .len();
    eprintln!(
        "packed {} files ({}) into {} for {name}",
        packed.files.len(),
        HumanBytes(packed.bytes),
        HumanBytes(len)
    );
    let findings = bundle::check(&args.dir, &manifest, &packed, len);
    for warning in &findings.warnings {
        eprintln!("warning: {warning}");
    }
    for error in &findings.errors {
        let level = if args.force {
            "warning (--force)"
        } else {
            "error"
        };
        eprintln!("{level}: {error}");
    }
    if !findings.errors.is_empty() && !args.force {
        bail!(
            "{} problem(s) in the bundle stop the deploy; nothing was uploaded \
             (fix them, leave files out with {}, or deploy anyway with --force)",
            findings.errors.len(),
            bundle::IGNORE_FILE
        );
    }

    let progress = progress::Upload::from_env(len)?;
    let shown = progress.handle();
    let body = upload_body(&temp.path, progress).await?;
    let answer = client.deploy(name, body, len, true).await;
    progress::finish(shown);

    match answer.with_context(|| format!("deploy of {name} failed"))? {
        DeployAnswer::Started(info) if args.detach => {
            println!(
                "build {} of {name} started (version {})",
                info.id, info.version
            );
            eprintln!(
                "follow it with `cpub build-log {} -f`; see `cpub builds {name}`",
                info.id
            );
            Ok(())
        }
        DeployAnswer::Started(info) => follow(&client, name, info.id).await,
        DeployAnswer::Active(info) => {
            println!("deployed {name} version {} ({})", info.version, info.digest);
            match client.function(name).await {
                Ok(function) => println!("url: {}", function.typed.url),
                Err(err) => eprintln!("warning: cannot look up the function's URL: {err:#}"),
            }
            Ok(())
        }
        DeployAnswer::Failed(info) => {
            eprintln!("--- build log of {name} version {} ---", info.version);
            eprintln!("{}", info.build_log.trim_end());
            eprintln!("--- end of build log ---");
            bail!(
                "build of {name} version {} failed; the previous version (if any) stays active",
                info.version
            )
        }
    }
}

/// Streams build `id`'s output to stderr until it ends, then reports how it
/// ended. Ctrl-C stops following only.
async fn follow(client: &Client, name: &str, id: i64) -> Result<()> {
    eprintln!("build {id} of {name} runs on the server; Ctrl-C stops following, not the build");
    let streamed = async {
        let response = client.build_log(id, true).await?;
        client.copy_log(response, &mut std::io::stderr()).await
    };
    tokio::select! {
        result = streamed => {
            if let Err(err) = result {
                eprintln!("warning: following the build log failed: {err:#}");
            }
        }
        _ = tokio::signal::ctrl_c() => {
            bail!("stopped following (Ctrl-C); build {id} goes on: `cpub build-log {id} -f`");
        }
    }
    // The log ends with the build; the row may lag by a moment.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info = client
            .build(id)
            .await
            .with_context(|| format!("cannot read how build {id} ended"))?
            .typed;
        if info.status != DeploymentStatus::Building || std::time::Instant::now() > until {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match info.status {
        DeploymentStatus::Active => {
            println!("deployed {name} version {} ({})", info.version, info.digest);
            match client.function(name).await {
                Ok(function) => println!("url: {}", function.typed.url),
                Err(err) => eprintln!("warning: cannot look up the function's URL: {err:#}"),
            }
            Ok(())
        }
        DeploymentStatus::Superseded => {
            println!(
                "built {name} version {}, but a newer version is active (see `cpub versions {name}`)",
                info.version
            );
            Ok(())
        }
        DeploymentStatus::Failed => bail!(
            "build {id} of {name} version {} failed (its log is above); the previous version (if any) stays active",
            info.version
        ),
        DeploymentStatus::Building => {
            bail!("build {id} of {name} is still running; follow it with `cpub build-log {id} -f`")
        }
    }
}

/// Reads and validates `DIR/cpub.toml` with the server's rules.
fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; is {} a function directory?",
            path.display(),
            dir.display()
        )
    })?;
    let manifest =
        Manifest::parse(&text).with_context(|| format!("invalid manifest {}", path.display()))?;
    if let Some(warning) = visibility_warning(&text, &manifest.name) {
        eprintln!("{warning}");
    }
    Ok(manifest)
}

/// The warning for a manifest that leaves `visibility` to its default
/// (`private`: every call needs a key), or `None` when it sets it.
fn visibility_warning(text: &str, name: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    (!table.contains_key("visibility")).then(|| {
        format!(
            "warning: {MANIFEST_FILE} does not set `visibility`, so {name} is private: every call              needs a key (`cpub key create {name}`). Add visibility = \"private\" or \"public\"              to say which you mean."
        )
    })
}

/// Catches what the build would trip over, before uploading.
fn check_bundle(dir: &Path, manifest: &Manifest, packed: &bundle::Packed) -> Result<()> {
    match (manifest.runtime, &manifest.entrypoint) {
        (Runtime::Binary | Runtime::Python | Runtime::Node, Some(entrypoint))
            if !packed.contains(entrypoint) =>
        {
            bail!(
                "entrypoint {entrypoint:?} is not in the bundle (build it first, and check {})",
                bundle::IGNORE_FILE
            )
        }
        (Runtime::Container, _) if !packed.contains(CONTAINERFILE) => bail!(
            "runtime = \"container\" needs a {CONTAINERFILE} at the top of the bundle (check {})",
            bundle::IGNORE_FILE
        ),
        _ => super::vendored::check(dir, manifest.runtime, packed),
    }
}

/// The request body: the file in chunks, advancing `progress`; once every
/// byte is sent a bar turns into a "building" spinner, since the server
/// answers only when the image is built. (With a `Content-Length` the HTTP
/// client stops polling at the last byte, so the switch cannot wait for EOF.)
async fn upload_body(path: &Path, progress: progress::Upload) -> Result<reqwest::Body> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let stream =
        futures_util::stream::try_unfold((file, progress), |(mut file, mut progress)| async {
            let mut buf = vec![0u8; CHUNK];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                progress.done();
                return Ok::<_, std::io::Error>(None);
            }
            buf.truncate(n);
            progress.advance(n as u64);
            Ok(Some((Bytes::from(buf), (file, progress))))
        });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// A private temporary file, removed on drop.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn create(name: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let file = format!("cpub-{name}-{}-{nanos}.tar.gz", std::process::id());
        Ok(Self {
            path: std::env::temp_dir().join(file),
        })
    }

    fn open_new(&self) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("cannot create {}", self.path.display()))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_without_visibility_gets_a_warning() {
        let bare = "name = \"a\"\nruntime = \"container\"\n";
        let warning = visibility_warning(bare, "a").expect("warned");
        assert!(
            warning.contains("private") && warning.contains("cpub key create a"),
            "{warning}"
        );
        for set in ["private", "public"] {
            let text = format!("{bare}visibility = \"{set}\"\n");
            assert_eq!(visibility_warning(&text, "a"), None, "{set}");
        }
        // A `visibility` key inside a table is not the manifest's.
        let nested = format!("{bare}[env]\nvisibility = \"public\"\n");
        assert!(visibility_warning(&nested, "a").is_some());
    }

    fn packed(files: &[&str]) -> bundle::Packed {
        bundle::Packed {
            files: files.iter().map(|f| f.to_string()).collect(),
            bytes: 0,
        }
    }

    #[test]
    fn manifest_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", read_manifest(dir.path()).unwrap_err());
        assert!(
            err.contains("cpub.toml") && err.contains("function directory"),
            "{err}"
        );
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            "name = \"hello\"\nruntime = \"binary\"\nentrypoint = \"bin/hello\"\n[scaling]\nconcurrency = 0\n",
        )
        .unwrap();
        let err = format!("{:#}", read_manifest(dir.path()).unwrap_err());
        assert!(err.contains("scaling.concurrency"), "{err}");
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            "name = \"hello\"\nruntime = \"binary\"\nentrypoint = \"bin/hello\"\n[env]\nX = 5\n",
        )
        .unwrap();
        let err = format!("{:#}", read_manifest(dir.path()).unwrap_err());
        assert!(err.contains("cpub.toml: env.X: invalid type"), "{err}");
    }

    #[test]
    fn bundle_must_hold_the_entrypoint_or_containerfile() {
        let binary =
            Manifest::parse("name = \"a\"\nruntime = \"binary\"\nentrypoint = \"bin/a\"\n")
                .unwrap();
        assert!(check_bundle(Path::new("."), &binary, &packed(&["cpub.toml", "bin/a"])).is_ok());
        let err = check_bundle(Path::new("."), &binary, &packed(&["cpub.toml"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bin/a"), "{err}");
        let container = Manifest::parse("name = \"a\"\nruntime = \"container\"\n").unwrap();
        assert!(check_bundle(Path::new("."), &container, &packed(&["Containerfile"])).is_ok());
        assert!(check_bundle(Path::new("."), &container, &packed(&["Dockerfile"])).is_err());
    }
}
