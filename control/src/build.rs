//! Image builds through Podman: the image tag of a deployment, and one build
//! run in the build sandbox (no network, a user namespace, resource limits,
//! a wall clock and an output cap; see `containerpub_podman::build`).
//!
//! Builds run on a Podman service of their own (`BuildSettings::podman_socket`,
//! a `vfs` store: the only kind with which Podman 4.3 builds correct images
//! in a user namespace); a built image is then moved to the store the
//! instances run from (`podman`) and removed from the build store.

use std::time::Duration;

use containerpub_podman::Podman;

use crate::archive::Bundle;
use crate::config::BuildSettings;

/// Longest the move of a built image to the instances' store may take.
const MOVE_TIMEOUT: Duration = Duration::from_secs(300);

/// Most build output kept in the database (the tail is kept).
pub const MAX_BUILD_LOG_BYTES: usize = 1 << 20;

/// How this database names the images its builds make:
/// `localhost/cpub-fn-<function>:v<version>-d<deployment id>-<token>`, the
/// token being the database's own random name (migration
/// `0018_image_token.sql`), read once at start.
///
/// A name is made once in a database (the deployment's id is never reused
/// there): a function deleted and made again starts at version 1 again, and
/// a removal of the earlier `v1`, written down until the build store is
/// idle (`containerpub_podman`'s `remove_when_idle`) or run by a build of
/// the deleted function that ends late, never takes the new one. The token
/// keeps databases apart, whose ids all start at 1: without it a later
/// database's build took an earlier one's tag (its instances then ran the
/// other's code) and left the earlier image in the store untagged.
#[derive(Clone, Debug)]
pub struct ImageNames {
    token: std::sync::Arc<str>,
}

impl ImageNames {
    /// The names of the database of `db`.
    pub async fn load(db: &sqlx::PgPool) -> Result<Self, sqlx::Error> {
        let token: String = sqlx::query_scalar("SELECT token FROM image_token")
            .fetch_one(db)
            .await?;
        Ok(Self::with_token(&token))
    }

    /// Names with a given token (tests).
    pub fn with_token(token: &str) -> Self {
        Self {
            token: token.into(),
        }
    }

    /// The image reference of deployment `deployment_id` (version `version`
    /// of `function`).
    pub fn tag(&self, function: &str, version: i32, deployment_id: i64) -> String {
        format!(
            "localhost/cpub-fn-{function}:v{version}-d{deployment_id}-{}",
            self.token
        )
    }
}

/// How a build ended.
#[derive(Debug)]
pub enum Outcome {
    /// The image exists under the tag.
    Built { log: String },
    /// The Containerfile failed, or the build was stopped (time limit,
    /// output cap): the user's problem, explained at the end of the log.
    Failed { log: String },
    /// Podman could not be asked (socket down, transport error).
    Unavailable { reason: String },
}

impl Outcome {
    /// The result label of `cpub_control_deploys_total`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Built { .. } => "built",
            Self::Failed { .. } => "failed",
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

/// Builds `bundle` as `tag` in the sandbox, stopping it after `timeout`,
/// and leaves the image in `podman`'s store.
pub async fn run(
    podman: &Podman,
    bundle: &Bundle,
    tag: &str,
    settings: &BuildSettings,
    timeout: Duration,
    observer: Option<containerpub_podman::build::BuildObserver>,
) -> Outcome {
    let mut limits = settings.limits;
    limits.log_tail_bytes = limits.log_tail_bytes.min(MAX_BUILD_LOG_BYTES);
    let builder = Podman::new(&settings.podman_socket);
    if let Some(base) = &bundle.base_image {
        match builder.image_exists(base).await {
            Ok(true) => {}
            Ok(false) => {
                return Outcome::Failed {
                    log: format!(
                        "error: the base image {base} is not in the build store; the platform's \
                         administrator makes it with `bash scripts/base-images.sh` \
                         (setup-host.sh does on its first run)\n"
                    ),
                };
            }
            Err(err) => {
                return Outcome::Unavailable {
                    reason: err.to_string(),
                };
            }
        }
    }
    let build = builder.build_image_observed(
        &bundle.context_tar,
        &bundle.containerfile,
        tag,
        &limits,
        timeout,
        observer.clone(),
    );
    match build.await {
        Ok(out) if out.ok => {
            if builder.socket() == podman.socket() {
                return Outcome::Built { log: out.log };
            }
            if let Some(observer) = &observer {
                observer("==> moving the image to the instances' store\n");
            }
            let started = std::time::Instant::now();
            let moved = tokio::time::timeout(MOVE_TIMEOUT, builder.move_image(tag, podman)).await;
            let reason = match moved {
                Ok(Ok(())) => match podman.image_exists(tag).await {
                    Ok(true) => None,
                    Ok(false) => {
                        Some("the moved image is missing from the instances' store".into())
                    }
                    Err(err) => Some(err.to_string()),
                },
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => {
                    // The move may still finish in the background: remove
                    // what it leaves on both sides.
                    builder.remove_when_idle(tag).await;
                    Some(format!("timed out after {} s", MOVE_TIMEOUT.as_secs()))
                }
            };
            match reason {
                None => {
                    tracing::debug!(
                        image = tag,
                        ms = started.elapsed().as_millis() as u64,
                        "image moved from the build store"
                    );
                    Outcome::Built { log: out.log }
                }
                Some(reason) => {
                    if let Err(err) = podman.remove_image(tag).await {
                        tracing::warn!(%err, image = tag, "could not remove a half-moved image");
                    }
                    Outcome::Unavailable {
                        reason: format!("moving the built image to the instances' store: {reason}"),
                    }
                }
            }
        }
        Ok(out) => {
            if let Some(stop) = out.stopped {
                tracing::info!(image = tag, output_bytes = out.output_bytes, %stop, "build stopped");
            }
            Outcome::Failed { log: out.log }
        }
        Err(err) => Outcome::Unavailable {
            reason: err.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let names = ImageNames::with_token("0123456789ab");
        assert_eq!(
            names.tag("hello", 3, 17),
            "localhost/cpub-fn-hello:v3-d17-0123456789ab"
        );
    }
}
