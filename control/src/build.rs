//! Image builds through Podman: the image tag of a deployment, and one build
//! run in the build sandbox (no network, resource limits, a wall clock and
//! an output cap; see `containerpub_podman::build`).

use std::time::Duration;

use containerpub_podman::Podman;

use crate::archive::Bundle;
use crate::config::BuildSettings;

/// Most build output kept in the database (the tail is kept).
pub const MAX_BUILD_LOG_BYTES: usize = 1 << 20;

/// Podman image reference of a function version.
pub fn image_tag(function: &str, version: i32) -> String {
    format!("localhost/cpub-fn-{function}:v{version}")
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

/// Builds `bundle` as `tag` in the sandbox, stopping it after `timeout`.
pub async fn run(
    podman: &Podman,
    bundle: &Bundle,
    tag: &str,
    settings: &BuildSettings,
    timeout: Duration,
) -> Outcome {
    let mut limits = settings.limits;
    limits.log_tail_bytes = limits.log_tail_bytes.min(MAX_BUILD_LOG_BYTES);
    let build = podman.build_image_with(
        &bundle.context_tar,
        &bundle.containerfile,
        tag,
        &limits,
        timeout,
    );
    match build.await {
        Ok(out) if out.ok => Outcome::Built { log: out.log },
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
        assert_eq!(image_tag("hello", 3), "localhost/cpub-fn-hello:v3");
    }
}
