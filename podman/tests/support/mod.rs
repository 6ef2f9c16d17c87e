//! What the client's tests on real Podman share: the client on the test
//! socket and the busybox test image (`containerpub_podman::testing`).

use containerpub_podman::Podman;
pub use containerpub_podman::testing::{BUSYBOX_IMAGE as IMAGE, podman};

/// Makes sure [`IMAGE`] exists (built once, then reused).
pub async fn build_image(podman: &Podman) {
    containerpub_podman::testing::ensure_busybox_image(podman, IMAGE).await;
}
