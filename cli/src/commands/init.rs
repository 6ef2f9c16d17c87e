//! `cpub init [--template rust|go|python|node|static] DIR`: writes a function
//! that deploys and answers as generated. The templates live in the
//! repository's `templates/` and are compiled into the binary; `{{name}}`
//! in them becomes the function's name (DIR's last component, or `--name`).
//! Existing files are never overwritten.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to create (it may exist if it is empty).
    dir: PathBuf,
    /// What the function is written in.
    #[arg(long, value_enum, default_value_t = Template::Python)]
    template: Template,
    /// Function name [default: DIR's last component].
    #[arg(long)]
    name: Option<String>,
}

/// The templates `cpub init` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// A Rust program (std only), `runtime = "binary"`: `cargo build --release` first.
    Rust,
    /// A Go program (net/http), `runtime = "binary"`: `go build` first.
    Go,
    /// A Python handler called by a visible stdlib server, `runtime = "python"`.
    Python,
    /// A Node.js handler called by a visible `node:http` server, `runtime = "node"`.
    Node,
    /// A static site in public/, served by a stdlib Python server.
    Static,
}

/// One file of a template: path in the function directory, text.
type File = (&'static str, &'static str);

macro_rules! template {
    ($dir:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../../templates/", $dir, "/", $path)))),*]
    };
}

impl Template {
    /// The files of the template.
    pub fn files(self) -> &'static [File] {
        match self {
            Self::Rust => {
                template!("rust": "cpub.toml", "Cargo.toml", "src/main.rs", ".cpubignore")
            }
            Self::Go => template!("go": "cpub.toml", "go.mod", "main.go", ".cpubignore"),
            Self::Python => {
                template!("python": "cpub.toml", "server.py", "handler.py", "requirements.txt", ".cpubignore")
            }
            Self::Node => {
                template!("node": "cpub.toml", "server.js", "handler.js", "package.json", ".cpubignore")
            }
            Self::Static => {
                template!("static": "cpub.toml", "server.py", "public/index.html", ".cpubignore")
            }
        }
    }

    /// What to run before `cpub deploy DIR`, if anything.
    pub fn build_step(self, name: &str) -> Option<String> {
        match self {
            Self::Rust => Some("cargo build --release".to_owned()),
            Self::Go => Some(format!("go build -o {name} .")),
            Self::Python | Self::Node | Self::Static => None,
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| {
                format!(
                    "cannot take a function name from {}; pass --name",
                    args.dir.display()
                )
            })?,
    };
    super::check_name(&name).with_context(|| {
        format!("{name:?} cannot name a function (pass --name NAME, or pick another DIR)")
    })?;
    write(&args.dir, args.template, &name)?;
    println!(
        "created {} function {name} in {}",
        format!("{:?}", args.template).to_lowercase(),
        args.dir.display()
    );
    let dir = shell_word(&args.dir);
    match args.template.build_step(&name) {
        Some(step) => println!("next: (cd {dir} && {step}) && cpub deploy {dir}"),
        None => println!("next: cpub deploy {dir}"),
    }
    Ok(())
}

/// Writes the template's files for function `name` into `dir`.
pub fn write(dir: &Path, template: Template, name: &str) -> Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && entries.next().is_some()
    {
        bail!(
            "{} exists and is not empty; cpub init writes only into a new or empty directory",
            dir.display()
        );
    }
    for (path, text) in template.files() {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        file.write_all(text.replace("{{name}}", name).as_bytes())
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    Ok(())
}

/// `dir` as one shell word for the printed hint.
fn shell_word(dir: &Path) -> String {
    let s = dir.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use containerpub_wire::{MANIFEST_FILE, Manifest};

    use super::*;

    #[test]
    fn every_template_has_a_valid_manifest_named_after_the_function() {
        for template in Template::value_variants() {
            let dir = tempfile::tempdir().unwrap();
            let fn_dir = dir.path().join("my-fn");
            write(&fn_dir, *template, "my-fn").unwrap();
            let text = std::fs::read_to_string(fn_dir.join(MANIFEST_FILE)).unwrap();
            let manifest = Manifest::parse(&text).unwrap_or_else(|e| panic!("{template:?}: {e}"));
            assert_eq!(manifest.name, "my-fn");
            for (path, _) in template.files() {
                let text = std::fs::read_to_string(fn_dir.join(path)).unwrap();
                assert!(
                    !text.contains("{{name}}"),
                    "{template:?} {path}: placeholder left"
                );
            }
            // The interpreted runtimes' entrypoints are in the template.
            if template.build_step("my-fn").is_none() {
                let entry = manifest.entrypoint.unwrap();
                assert!(fn_dir.join(&entry).is_file(), "{template:?}: {entry}");
            }
        }
    }

    #[test]
    fn refuses_a_non_empty_directory_and_a_bad_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let err = write(dir.path(), Template::Python, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
        let err = run(Args {
            dir: dir.path().join("Bad_Name"),
            template: Template::Node,
            name: None,
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot name a function"),
            "{err:#}"
        );
        assert!(!dir.path().join("Bad_Name").exists());
    }
}
