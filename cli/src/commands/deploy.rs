//! `cpub deploy`: validate `cpub.toml` locally, pack the directory, upload it
//! with a progress bar, wait for the build, print the version and URL.

use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use containerpub_wire::manifest::Runtime;
use containerpub_wire::{CONTAINERFILE, MANIFEST_FILE, Manifest};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt;

use super::Context;
use crate::bundle;
use crate::client::DeployAnswer;

/// Upload chunk size.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function directory (holds cpub.toml).
    #[arg(default_value = ".")]
    dir: PathBuf,
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

    let progress = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .context("bad progress template")?,
    );
    let body = upload_body(&temp.path, progress.clone()).await?;
    let answer = client.deploy(name, body, len).await;
    progress.finish_and_clear();

    match answer.with_context(|| format!("deploy of {name} failed"))? {
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
    Manifest::parse(&text).with_context(|| format!("invalid manifest {}", path.display()))
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
/// byte is sent the bar turns into a "building" spinner, since the server
/// answers only when the image is built. (With a `Content-Length` the HTTP
/// client stops polling at the last byte, so the switch cannot wait for EOF.)
async fn upload_body(path: &Path, progress: ProgressBar) -> Result<reqwest::Body> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let stream = futures_util::stream::try_unfold((file, progress), |(mut file, progress)| async {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            show_building(&progress);
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        progress.inc(n as u64);
        if progress
            .length()
            .is_some_and(|len| progress.position() >= len)
        {
            show_building(&progress);
        }
        Ok(Some((Bytes::from(buf), (file, progress))))
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

/// Turns the upload bar into the "building" spinner (once).
fn show_building(progress: &ProgressBar) {
    if progress.length().is_none() {
        return;
    }
    progress.unset_length();
    progress.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.set_message("uploaded; building image");
    progress.reset_elapsed();
    progress.enable_steady_tick(Duration::from_millis(120));
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
