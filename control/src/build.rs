//! Image builds through Podman: the image tag of a deployment, and one build
//! run under the build timeout.

use std::time::Duration;

use containerpub_pool::Podman;

use crate::archive::Bundle;

/// Most build output kept in the database (the tail is kept).
pub const MAX_BUILD_LOG_BYTES: usize = 256 * 1024;

/// Podman image reference of a function version.
pub fn image_tag(function: &str, version: i32) -> String {
    format!("localhost/cpub-fn-{function}:v{version}")
}

/// How a build ended.
#[derive(Debug)]
pub enum Outcome {
    /// The image exists under the tag.
    Built { log: String },
    /// The Containerfile failed or the build timed out: the user's problem,
    /// explained in the log.
    Failed { log: String },
    /// Podman could not be asked (socket down, transport error).
    Unavailable { reason: String },
}

/// Builds `bundle` as `tag`, giving up after `timeout`.
pub async fn run(podman: &Podman, bundle: &Bundle, tag: &str, timeout: Duration) -> Outcome {
    let build = podman.build_image(&bundle.context_tar, &bundle.containerfile, tag);
    match tokio::time::timeout(timeout, build).await {
        Ok(Ok(out)) if out.ok => Outcome::Built { log: tail(out.log) },
        Ok(Ok(out)) => Outcome::Failed { log: tail(out.log) },
        Ok(Err(err)) => Outcome::Unavailable {
            reason: err.to_string(),
        },
        Err(_) => Outcome::Failed {
            log: format!("error: the build timed out after {} s\n", timeout.as_secs()),
        },
    }
}

/// Keeps the last [`MAX_BUILD_LOG_BYTES`] of a log, on a char boundary.
fn tail(log: String) -> String {
    if log.len() <= MAX_BUILD_LOG_BYTES {
        return log;
    }
    let mut start = log.len() - MAX_BUILD_LOG_BYTES;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes of build output cut …]\n{}", &log[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_log_tails() {
        assert_eq!(image_tag("hello", 3), "localhost/cpub-fn-hello:v3");
        let long = "é".repeat(MAX_BUILD_LOG_BYTES);
        let t = tail(long);
        assert!(t.starts_with("[… ") && t.len() < MAX_BUILD_LOG_BYTES + 100);
        assert_eq!(tail("short".into()), "short");
    }
}
