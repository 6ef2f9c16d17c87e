//! What the platform builds for each `runtime`: the base image (made by
//! `scripts/base-images.sh` from Debian's packages, in the build store) and
//! the generated Containerfile.
//!
//! - `binary`, static: `FROM scratch`, the executable alone (as before).
//! - `binary`, dynamically linked (glibc): `FROM` the `debian` base (libc,
//!   libgcc, libstdc++), the executable alone at `/app/function`.
//! - `python` / `node`: `FROM` the `python` / `node` base, the whole bundle
//!   at `/app`, run as `python3 /app/<entrypoint>` / `node /app/<entrypoint>`;
//!   Python gets `/app/vendor` on its import path (dependencies are vendored
//!   in the bundle: builds have no network).
//!
//! Every generated Containerfile has only `FROM`, `COPY`, `USER`, `WORKDIR`,
//! `ENV`, `EXPOSE`, `ENTRYPOINT`: no `RUN`, so no build step runs the
//! deployer's code, and the image is the base's layer plus the bundle's.

use containerpub_wire::manifest::Runtime;

/// The tag of the base images this control plane builds from; must equal
/// `VERSION` in `scripts/base-images.sh` (a test checks it).
pub const BASE_IMAGE_VERSION: u32 = 1;

/// Name of the generated Containerfile in a `python` / `node` build context
/// (a bundle file of that name is left out of the context).
pub const GENERATED_CONTAINERFILE: &str = ".cpub-Containerfile";

/// A platform base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Debian,
    Python,
    Node,
}

impl Base {
    pub const ALL: [Base; 3] = [Base::Debian, Base::Python, Base::Node];

    /// Its tag in the build store.
    pub fn image(self) -> String {
        let name = match self {
            Self::Debian => "debian",
            Self::Python => "python",
            Self::Node => "node",
        };
        format!("localhost/cpub-base/{name}:{BASE_IMAGE_VERSION}")
    }
}

/// Every platform base image: a `runtime = "container"` Containerfile may
/// start `FROM` one of them too.
pub fn base_images() -> Vec<String> {
    Base::ALL.iter().map(|b| b.image()).collect()
}

/// The Containerfile of a dynamically linked executable (in the context as
/// `binary`), on the `debian` base.
pub fn dynamic_binary_containerfile(binary: &str, port: u16) -> String {
    format!(
        "FROM {base}\n\
         COPY {binary} /app/function\n\
         USER 65534:65534\n\
         WORKDIR /app\n\
         ENV PORT={port}\n\
         EXPOSE {port}\n\
         ENTRYPOINT [\"/app/function\"]\n",
        base = Base::Debian.image()
    )
}

/// The Containerfile of a `python` or `node` bundle (the whole bundle is
/// the context); `None` for the other runtimes.
pub fn language_containerfile(runtime: Runtime, entrypoint: &str, port: u16) -> Option<String> {
    let (base, interpreter, env) = match runtime {
        Runtime::Python => (
            Base::Python,
            "/usr/bin/python3",
            "ENV PYTHONPATH=/app/vendor\n",
        ),
        Runtime::Node => (Base::Node, "/usr/bin/node", ""),
        Runtime::Binary | Runtime::Container => return None,
    };
    // JSON strings: a path with quotes or backslashes stays one argument.
    let script = serde_json::to_string(&format!("/app/{entrypoint}")).ok()?;
    Some(format!(
        "FROM {image}\n\
         COPY . /app/\n\
         USER 65534:65534\n\
         WORKDIR /app\n\
         ENV PORT={port}\n\
         {env}\
         EXPOSE {port}\n\
         ENTRYPOINT [\"{interpreter}\", {script}]\n",
        image = base.image()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_matches_the_script_that_builds_the_images() {
        let script = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/base-images.sh"
        ))
        .unwrap();
        let line = format!("\nVERSION={BASE_IMAGE_VERSION}\n");
        assert!(
            script.contains(&line),
            "scripts/base-images.sh must set{line}"
        );
        for base in ["debian", "python", "node"] {
            assert!(
                script.contains(&format!("    {base}) echo ")),
                "{base} packages"
            );
        }
    }

    #[test]
    fn generated_containerfiles_pass_the_sandbox_check() {
        let bases = base_images();
        let python = language_containerfile(Runtime::Python, "server.py", 8080).unwrap();
        assert!(
            python.starts_with("FROM localhost/cpub-base/python:1\n"),
            "{python}"
        );
        assert!(python.contains("ENTRYPOINT [\"/usr/bin/python3\", \"/app/server.py\"]"));
        let node = language_containerfile(Runtime::Node, "a \"b\".js", 9000).unwrap();
        assert!(
            node.contains("ENTRYPOINT [\"/usr/bin/node\", \"/app/a \\\"b\\\".js\"]"),
            "{node}"
        );
        assert!(language_containerfile(Runtime::Binary, "x", 1).is_none());
        let dynamic = dynamic_binary_containerfile("function", 8080);
        for text in [python, node, dynamic] {
            crate::containerfile::check(&text, &bases).unwrap();
            assert!(crate::containerfile::check(&text, &[]).is_err(), "{text}");
            assert!(!text.contains("\nRUN"), "{text}");
        }
    }
}
