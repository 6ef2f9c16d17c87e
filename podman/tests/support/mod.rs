//! What the client's tests on real Podman share: the client on the test
//! socket and the busybox test image.

use std::path::Path;

use containerpub_podman::{DEFAULT_SOCKET, Podman};

/// The busybox httpd image the pool's tests use too.
pub const IMAGE: &str = "localhost/cpub-test-busybox:1";

/// A client of `CPUB_PODMAN_SOCKET`, or of the default socket.
pub fn podman() -> Podman {
    Podman::new(std::env::var("CPUB_PODMAN_SOCKET").unwrap_or_else(|_| DEFAULT_SOCKET.into()))
}

/// Builds [`IMAGE`] (busybox-static is installed by scripts/setup-host.sh).
pub async fn build_image(podman: &Podman) {
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("ctx.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    builder
        .append_path_with_name(Path::new("/bin/busybox"), "busybox")
        .unwrap();
    let containerfile = b"FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/tmp\"]\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(containerfile.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "Containerfile", &containerfile[..])
        .unwrap();
    builder.finish().unwrap();
    drop(builder);
    let out = podman
        .build_image(&tar_path, "Containerfile", IMAGE)
        .await
        .unwrap();
    assert!(out.ok, "build failed: {}", out.log);
}
