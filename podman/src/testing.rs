//! Fixtures for tests on real Podman (feature `test-util`): the client of
//! the test socket, a busybox httpd image built once and then reused, and
//! a look into the build service's store.
//!
//! Building a fixed tag again on every test left the previous image behind,
//! untagged, each time; hundreds of them made `podman images` take minutes.
//! So a tag is built only when Podman does not have it (one build at a time
//! per process; test binaries run one after another).

use std::path::Path;

use tokio::sync::Mutex;

use crate::build::DEFAULT_BUILD_SOCKET;
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
    let tar_path = busybox_context(
        dir.path(),
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/tmp\"]\n",
    );
    let out = podman
        .build_image(&tar_path, "Containerfile", tag)
        .await
        .expect("building the test image");
    assert!(out.ok, "building {tag} failed: {}", out.log);
}

/// A build context in `dir` (`ctx.tar`, returned): /bin/busybox as
/// `busybox` and `containerfile` as `Containerfile`.
pub fn busybox_context(dir: &Path, containerfile: &str) -> std::path::PathBuf {
    let tar_path = dir.join("ctx.tar");
    let mut builder =
        tar::Builder::new(std::fs::File::create(&tar_path).expect("build context file"));
    builder
        .append_path_with_name(Path::new("/bin/busybox"), "busybox")
        .expect("adding /bin/busybox (installed by scripts/setup-host.sh)");
    let mut header = tar::Header::new_gnu();
    header.set_size(containerfile.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "Containerfile", containerfile.as_bytes())
        .expect("adding the Containerfile");
    builder.finish().expect("writing the build context");
    tar_path
}

/// Removes `images` from the store of `store` (its socket) with the
/// Podman CLI (absent ones are fine; each is tried a few times, as
/// concurrent Podman operations can make a removal fail), holding the
/// store's exclusive lock as [`Podman::remove_image`] does: a removal that
/// bypassed it, while a control plane of another test loaded an image,
/// deleted a layer the load was reusing (`layer not known`, seen in CI).
/// For a test's `Drop`: never panics, gives up after
/// [`crate::store::REMOVAL_WAIT`] and says so.
pub fn remove_images_cli(store: &Podman, images: &[String]) {
    if images.is_empty() {
        return;
    }
    let _exclusive = match store.exclusive_blocking(crate::store::REMOVAL_WAIT) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("not removing test images {images:?}: {err}");
            return;
        }
    };
    let url = format!("unix://{}", store.socket().display());
    let podman = |args: &[&str]| {
        std::process::Command::new("podman")
            .args(["--url", &url])
            .args(args)
            .output()
            .ok()
            .and_then(|o| o.status.code())
    };
    for image in images {
        for _ in 0..5 {
            // `image exists`: 0 yes, 1 no, other codes are errors.
            if podman(&["image", "exists", image]) == Some(1)
                || podman(&["rmi", "-f", image]) == Some(0)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

/// The build service's socket (scripts/setup-host.sh): `CPUB_BUILD_PODMAN_SOCKET`,
/// as cpub-control reads it, or the default.
pub fn build_socket() -> String {
    std::env::var("CPUB_BUILD_PODMAN_SOCKET").unwrap_or_else(|_| DEFAULT_BUILD_SOCKET.into())
}

/// Podman storage containers (Buildah's working containers) of builds run
/// by process `pid` in the build service's store, found by the build cgroup
/// named in their settings.
pub fn build_containers_of(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("podman")
        .args(["--url", &format!("unix://{}", build_socket())])
        .args([
            "info",
            "--format",
            "{{.Store.GraphRoot}} {{.Store.GraphDriverName}}",
        ])
        .output()
        .expect("podman info");
    let info = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (root, driver) = info.split_once(' ').expect("graph root and driver");
    let want = format!("/cpub-build-{pid}-");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(Path::new(root).join(format!("{driver}-containers")))
    else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("userdata/buildah.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if v["CommonBuildOpts"]["CgroupParent"]
            .as_str()
            .is_some_and(|p| p.starts_with(&want))
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// Removes, when dropped (a test that panicked too), every container
/// labelled `key=value`: a failing test leaves nothing behind for the
/// next run's leak check.
#[derive(Debug)]
pub struct RemoveLabelled {
    filter: String,
}

impl RemoveLabelled {
    /// Containers labelled `key=value`.
    pub fn new(key: &str, value: &str) -> Self {
        Self {
            filter: format!("label={key}={value}"),
        }
    }
}

impl Drop for RemoveLabelled {
    fn drop(&mut self) {
        let Ok(out) = std::process::Command::new("podman")
            .args(["ps", "-aq", "--filter", &self.filter])
            .output()
        else {
            return;
        };
        let out = String::from_utf8_lossy(&out.stdout);
        let ids: Vec<&str> = out.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("podman")
                .args(["rm", "-f", "-t", "0"])
                .args(&ids)
                .output();
        }
    }
}
