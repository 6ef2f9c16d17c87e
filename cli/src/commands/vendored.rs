//! Dependencies travel in the bundle: builds have no network (the build
//! sandbox), so a Python function's packages must be in `vendor/` and a
//! Node.js function's in `node_modules/`. `cpub deploy` refuses a bundle
//! whose `requirements.txt` / `package.json` lists dependencies it does not
//! carry, and says how to vendor them, before anything is uploaded.

use std::path::Path;

use anyhow::{Result, bail};
use containerpub_wire::manifest::Runtime;

use crate::bundle::{IGNORE_FILE, Packed};

/// The command that vendors a Python function's requirements for the
/// `python` base image (CPython 3.11, glibc, x86-64).
pub const PIP_VENDOR: &str = "pip install --target vendor --python-version 3.11 \
     --platform manylinux2014_x86_64 --only-binary=:all: -r requirements.txt";
/// The command that installs a Node.js function's dependencies.
pub const NPM_VENDOR: &str = "npm install --omit=dev --no-bin-links";

/// Refuses a bundle whose dependency list names packages it does not carry.
pub fn check(dir: &Path, runtime: Runtime, packed: &Packed) -> Result<()> {
    match runtime {
        Runtime::Python => {
            let Ok(text) = std::fs::read_to_string(dir.join("requirements.txt")) else {
                return Ok(());
            };
            if packed.contains("requirements.txt")
                && requirements_listed(&text)
                && !carries(packed, "vendor/")
            {
                bail!(
                    "requirements.txt lists packages but the bundle has no vendor/ directory: \
                     builds have no network, so dependencies travel in the bundle. \
                     Vendor them with `{PIP_VENDOR}` (and keep vendor/ out of {IGNORE_FILE})"
                );
            }
            Ok(())
        }
        Runtime::Node => {
            let Ok(text) = std::fs::read_to_string(dir.join("package.json")) else {
                return Ok(());
            };
            if packed.contains("package.json")
                && node_dependencies_listed(&text)?
                && !carries(packed, "node_modules/")
            {
                bail!(
                    "package.json lists dependencies but the bundle has no node_modules/: \
                     builds have no network, so dependencies travel in the bundle. \
                     Install them with `{NPM_VENDOR}` (and keep node_modules/ out of {IGNORE_FILE})"
                );
            }
            Ok(())
        }
        Runtime::Binary | Runtime::Container => Ok(()),
    }
}

fn carries(packed: &Packed, dir: &str) -> bool {
    packed.files.iter().any(|f| f.starts_with(dir))
}

/// Whether `requirements.txt` names at least one requirement (comments,
/// blank lines and option lines such as `--index-url` do not count).
fn requirements_listed(text: &str) -> bool {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .any(|l| !l.is_empty() && !l.starts_with('-'))
}

/// Whether `package.json` has a non-empty `dependencies` object.
fn node_dependencies_listed(text: &str) -> Result<bool> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(err) => bail!("package.json is not valid JSON: {err}"),
    };
    Ok(value
        .get("dependencies")
        .and_then(serde_json::Value::as_object)
        .is_some_and(|deps| !deps.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(files: &[&str]) -> Packed {
        Packed {
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            bytes: 0,
        }
    }

    #[test]
    fn python_requirements_need_vendor() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("requirements.txt"),
            "# none\n\n--index-url x\n",
        )
        .unwrap();
        let files = packed(&["cpub.toml", "requirements.txt", "server.py"]);
        check(dir.path(), Runtime::Python, &files).unwrap();
        std::fs::write(dir.path().join("requirements.txt"), "six==1.16.0  # why\n").unwrap();
        let err = check(dir.path(), Runtime::Python, &files)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("vendor/") && err.contains("pip install --target vendor"),
            "{err}"
        );
        let files = packed(&["requirements.txt", "server.py", "vendor/six.py"]);
        check(dir.path(), Runtime::Python, &files).unwrap();
        // Not in the bundle (ignored): nothing to check.
        check(dir.path(), Runtime::Python, &packed(&["server.py"])).unwrap();
    }

    #[test]
    fn node_dependencies_need_node_modules() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("package.json");
        std::fs::write(&json, r#"{"name":"x","dependencies":{}}"#).unwrap();
        let files = packed(&["package.json", "server.js"]);
        check(dir.path(), Runtime::Node, &files).unwrap();
        std::fs::write(&json, r#"{"dependencies":{"left-pad":"1.3.0"}}"#).unwrap();
        let err = check(dir.path(), Runtime::Node, &files)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node_modules/") && err.contains("npm install"),
            "{err}"
        );
        let files = packed(&[
            "package.json",
            "server.js",
            "node_modules/left-pad/index.js",
        ]);
        check(dir.path(), Runtime::Node, &files).unwrap();
        std::fs::write(&json, "{").unwrap();
        let err = check(dir.path(), Runtime::Node, &packed(&["package.json"])).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }
}
