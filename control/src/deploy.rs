//! The deploy pipeline: stream the upload to a temp file while hashing it,
//! validate the bundle, store the artifact content-addressed, record the
//! deployment, build the image, activate it.
//!
//! Temp files are `tempfile` handles: they are removed on every path,
//! including errors, panics and a client that goes away. Once the upload is
//! in, the rest runs in its own task so a disconnect cannot leave a
//! deployment half-done. Once its row exists the build is *started*: a
//! detached deploy answers then (`Started`), and the steps and Podman's
//! output go to the live log (`builds`) for followers as they happen.

use std::path::{Path, PathBuf};

use axum::body::Body;
use containerpub_wire::api::{DeploymentInfo, DeploymentStatus};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::archive::{self, Bundle};
use crate::auth::Caller;
use crate::build::{self, Outcome};
use crate::containerfile;
use crate::db::{self, Activation, NewDeployment};
use crate::error::{Error, Result};
use crate::gc;
use crate::state::AppState;

/// An upload on disk (removed when dropped) and its sha256.
#[derive(Debug)]
pub struct Upload {
    pub path: TempPath,
    pub sha256_hex: String,
    pub bytes: u64,
}

/// Streams `body` into a temp file under `tmp_dir`, hashing as it goes;
/// more than `limit` bytes → 413.
pub async fn receive(body: Body, tmp_dir: &Path, limit: u64) -> Result<Upload> {
    let named = tempfile::Builder::new()
        .prefix("upload-")
        .suffix(".tar.gz")
        .tempfile_in(tmp_dir)?;
    let (file, path) = named.into_parts();
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| Error::bad_request("body", format!("the upload was interrupted: {e}")))?;
        bytes += chunk.len() as u64;
        if bytes > limit {
            return Err(Error::too_large(
                "body",
                format!("the upload is larger than the limit of {limit} bytes"),
            ));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    if bytes == 0 {
        return Err(Error::bad_request(
            "body",
            "the upload is empty (expected a .tar.gz bundle)",
        ));
    }
    Ok(Upload {
        path,
        sha256_hex: hex::encode(hasher.finalize()),
        bytes,
    })
}

/// The answer to a deploy.
#[derive(Debug)]
pub enum Deployed {
    /// The build succeeded (201).
    Built(DeploymentInfo),
    /// The build failed (422); the previous version stays active.
    Failed(DeploymentInfo),
}

/// Told once the deployment row exists and the build is about to run.
pub type Started = tokio::sync::oneshot::Sender<NewDeployment>;

/// Runs validation, storage, build and activation for an upload; `started`
/// (if any) hears the new row before the build runs.
pub async fn deploy(
    state: AppState,
    caller: Caller,
    name: String,
    upload: Upload,
    started: Option<Started>,
) -> Result<Deployed> {
    let settings = state.settings.clone();
    let work_dir = tempfile::Builder::new()
        .prefix("deploy-")
        .tempdir_in(settings.tmp_dir())?;

    // Validate and write the build context (blocking I/O and decompression).
    let gz_path = upload.path.to_path_buf();
    let context_dir = work_dir.path().to_path_buf();
    let limits = settings.limits;
    let fn_name = name.clone();
    let mut base_images = settings.build.base_images.clone();
    base_images.extend(crate::runtimes::base_images());
    let bundle: Bundle = tokio::task::spawn_blocking(move || {
        let bundle = archive::prepare(&gz_path, &context_dir, &fn_name, &limits)?;
        // Only scratch, allowed base images and earlier stages: never another
        // function's image, a URL or a mount (the build sandbox).
        let text = containerfile::read_from_context(&bundle.context_tar, &bundle.containerfile)
            .and_then(|text| containerfile::check(&text, &base_images))
            .map_err(|message| Error::bad_request(bundle.containerfile.clone(), message));
        text.map(|()| bundle)
    })
    .await
    .map_err(|e| anyhow::anyhow!("bundle validation task: {e}"))??;

    let digest = format!("sha256:{}", upload.sha256_hex);
    let upload_bytes = upload.bytes;
    let dir = settings.artifacts_dir();
    let artifact = artifact_path(&upload, &dir);
    let (user_id, _) = caller.user()?;
    let new = db::create_deployment(
        &state.db,
        &name,
        user_id,
        caller.is_admin(),
        &bundle.manifest,
        &digest,
        &artifact.to_string_lossy(),
    )
    .await?
    .ok_or_else(|| {
        Error::Forbidden(format!(
            "function {name} is owned by another user; role {} may only deploy functions it owns",
            caller.role().map_or("node", |r| r.as_str())
        ))
    })?;
    // Stored once the row exists, under the digest's lock: a delete's
    // garbage collection then either sees this deployment or has removed
    // the file before it is stored again (see `gc`).
    let stored = async {
        let mut lock = gc::ArtifactLock::acquire(&state.db, &artifact).await?;
        if lock.deployment_exists(new.deployment_id).await? {
            store_artifact(upload, &dir).await?;
        }
        lock.release().await?;
        Ok::<_, Error>(())
    }
    .await;
    if let Err(err) = stored {
        let log = "error: the bundle could not be stored\n";
        db::mark_failed(&state.db, new.deployment_id, log).await?;
        return Err(err);
    }
    let tag = state.images.tag(&name, new.version, new.deployment_id);
    tracing::info!(function = %name, version = new.version, %digest, user = %caller.name(), "building");
    let live = state.builds.begin(new.deployment_id);
    let say = |text: String| live.build().push(&text);
    say(format!(
        "==> build {} of {name}: version {}, bundle {digest} ({} bytes)\n==> building image {tag}\n",
        new.deployment_id, new.version, upload_bytes
    ));
    if let Some(started) = started {
        let _ = started.send(new);
    }
    let observer: containerpub_podman::build::BuildObserver = {
        let build = std::sync::Arc::clone(live.build());
        std::sync::Arc::new(move |text: &str| build.push(text))
    };
    let started = std::time::Instant::now();
    let outcome = build::run(
        &state.podman,
        &bundle,
        &tag,
        &settings.build,
        settings.build_timeout,
        Some(observer),
    )
    .await;
    drop(work_dir);
    let ms = started.elapsed().as_millis() as u64;
    crate::metrics::record_build(outcome.result(), started.elapsed());
    match outcome {
        Outcome::Built { log } => {
            say(format!(
                "==> image built in {:.1} s; activating version {}\n",
                ms as f64 / 1000.0,
                new.version
            ));
            match db::activate(&state.db, new, &bundle.manifest, &tag, &log).await? {
                Activation::Activated { revision } => {
                    tracing::info!(function = %name, version = new.version, revision, ms, "deployment active");
                    say("==> waiting for the proxies to serve it\n".into());
                    state.watchers.await_proxies(revision).await;
                    say(format!("==> version {} of {name} is active\n", new.version));
                    let (state, name) = (state.clone(), name.clone());
                    tokio::spawn(async move { crate::history::retain(&state, &name).await });
                }
                Activation::Outdated => {
                    say(format!(
                        "==> version {} was built, but a newer version is active: it stays superseded\n",
                        new.version
                    ));
                    tracing::info!(function = %name, version = new.version, ms, "built, but a newer version is already active");
                }
                Activation::FunctionGone => {
                    tracing::info!(function = %name, version = new.version, "function deleted during the build; removing the image");
                    if let Err(err) = gc::remove_image(&state.podman, &tag).await {
                        tracing::warn!(%err, image = %tag, "could not remove the image");
                    }
                    return Err(Error::Conflict(format!(
                        "function {name:?} was deleted while version {} was building",
                        new.version
                    )));
                }
            }
            Ok(Deployed::Built(
                db::get_deployment(&state.db, new.deployment_id).await?,
            ))
        }
        Outcome::Failed { log } => {
            say(format!(
                "==> the build of version {} failed; the previous version stays active\n",
                new.version
            ));
            tracing::info!(function = %name, version = new.version, ms, "build failed");
            db::mark_failed(&state.db, new.deployment_id, &log).await?;
            let info = db::get_deployment(&state.db, new.deployment_id).await?;
            debug_assert_eq!(info.status, DeploymentStatus::Failed);
            Ok(Deployed::Failed(info))
        }
        Outcome::Unavailable { reason } => {
            tracing::error!(function = %name, version = new.version, %reason, "podman unavailable for a build");
            let log = format!("error: the image build could not run: {reason}\n");
            say(log.clone());
            db::mark_failed(&state.db, new.deployment_id, &log).await?;
            Err(Error::Unavailable(
                "the image builder (podman) is unavailable; try again later".into(),
            ))
        }
    }
}

/// Where the upload is stored: `<artifacts>/<hex>.tar.gz`.
fn artifact_path(upload: &Upload, dir: &Path) -> PathBuf {
    dir.join(format!("{}.tar.gz", upload.sha256_hex))
}

/// Moves the upload to `<artifacts>/<hex>.tar.gz` unless that exists.
async fn store_artifact(upload: Upload, dir: &Path) -> Result<PathBuf> {
    let dest = artifact_path(&upload, dir);
    if tokio::fs::try_exists(&dest).await? {
        return Ok(dest); // content-addressed: same bytes already stored
    }
    let tmp = upload.path;
    let target = dest.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        // Same file system (both under the data dir): an atomic rename.
        tmp.persist(&target).map_err(|e| e.error)?;
        Ok(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("artifact store task: {e}"))??;
    Ok(dest)
}
