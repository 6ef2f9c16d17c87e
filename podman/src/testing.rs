//! Fixtures for tests on real Podman (feature `test-util`): the client of
//! the test socket and a busybox httpd image, built once and then reused.
//!
//! Building a fixed tag again on every test left the previous image behind,
//! untagged, each time; hundreds of them made `podman images` take minutes.
//! So a tag is built only when Podman does not have it (one build at a time
//! per process; test binaries run one after another).

use std::path::Path;

use tokio::sync::Mutex;

use crate::{DEFAULT_SOCKET, Podman};

/// The busybox httpd image most tests run (`busybox httpd -f -p 8080`).
pub const BUSYBOX_IMAGE: &str = "localhost/cpub-test-busybox:1";

/// A client of `CPUB_PODMAN_SOCKET`, or of the default socket.
pub fn podman() -> Podman {
    Podman::new(std::env::var("CPUB_PODMAN_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.into()))
}

/// Makes sure `tag` names a busybox httpd image (`FROM scratch`, the host's
/// static busybox, installed by scripts/setup-host.sh): built when missing.
/// Panics (it is for tests) when the build fails, with the build's log.
pub async fn ensure_busybox_image(podman: &Podman, tag: &str) {
    static BUILDING: Mutex<()> = Mutex::const_new(());
    let _one_at_a_time = BUILDING.lock().await;
    if podman
        .image_exists(tag)
        .await
        .expect("asking Podman for an image")
    {
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let tar_path = dir.path().join("ctx.tar");
    let mut builder =
        tar::Builder::new(std::fs::File::create(&tar_path).expect("build context file"));
    builder
        .append_path_with_name(Path::new("/bin/busybox"), "busybox")
        .expect("adding /bin/busybox (installed by scripts/setup-host.sh)");
    let containerfile = b"FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/tmp\"]\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(containerfile.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "Containerfile", &containerfile[..])
        .expect("adding the Containerfile");
    builder.finish().expect("writing the build context");
    drop(builder);
    let out = podman
        .build_image(&tar_path, "Containerfile", tag)
        .await
        .expect("building the test image");
    assert!(out.ok, "building {tag} failed: {}", out.log);
}
