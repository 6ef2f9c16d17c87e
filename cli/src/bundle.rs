//! Packs a function directory into the `.tar.gz` bundle that `cpub deploy`
//! uploads: relative paths, `.cpubignore` honoured, `.git/` left out.
//!
//! Only `.cpubignore` files (gitignore syntax, in the directory or below)
//! decide what is left out: `.gitignore` is not read and hidden files are
//! kept, because a build output such as `bin/` is often gitignored yet is
//! exactly what a `runtime = "binary"` bundle must carry. The archive is
//! deterministic (sorted entries, fixed owner and mtime) so the same
//! directory always has the same digest. Modes are normalised to 0755 for
//! anything executable and 0644 otherwise, so the unprivileged user the
//! function runs as can read and run what the developer could.
//!
//! [`check`] looks at a packed bundle before it is uploaded (issue 13, the
//! original ContainerPub's analyzer): sizes against the control plane's
//! default limits, files that look like secrets (`.env`, private keys,
//! cloud credentials, by name and by content), a `binary` entrypoint's
//! architecture and linking (the server's rule, `wire::elf`), Containerfile
//! bases the platform may not provide, and directories usually left out.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use ignore::WalkBuilder;

/// Name of the per-directory ignore file.
pub const IGNORE_FILE: &str = ".cpubignore";

/// What went into an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// Relative `/`-separated paths of the regular files, in archive order.
    pub files: Vec<String>,
    /// Sum of the files' sizes before compression.
    pub bytes: u64,
}

impl Packed {
    /// Whether the bundle carries the file at `path` (relative, `/`-separated).
    pub fn contains(&self, path: &str) -> bool {
        let path = path.trim_start_matches("./");
        self.files.iter().any(|f| f == path)
    }
}

/// Writes `dir` as a gzip-compressed tar archive to `out`.
pub fn pack<W: Write>(dir: &Path, out: W) -> Result<Packed> {
    let mut builder = tar::Builder::new(GzEncoder::new(out, Compression::default()));
    let mut packed = Packed::default();

    let walker = WalkBuilder::new(dir)
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(|entry| entry.depth() == 0 || entry.file_name() != ".git")
        .build();

    for entry in walker {
        let entry = entry.with_context(|| format!("cannot walk {}", dir.display()))?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)
            .context("walked outside the bundle")?;
        let Some(rel_str) = rel.to_str() else {
            bail!(
                "{}: file names in a bundle must be UTF-8",
                entry.path().display()
            );
        };
        let meta = std::fs::symlink_metadata(entry.path())
            .with_context(|| format!("cannot stat {}", entry.path().display()))?;
        let file_type = meta.file_type();

        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if file_type.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{rel_str}/"), std::io::empty())
                .with_context(|| format!("cannot add {rel_str}/ to the bundle"))?;
        } else if file_type.is_file() {
            let executable = meta.permissions().mode() & 0o111 != 0;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(meta.len());
            let file = std::fs::File::open(entry.path())
                .with_context(|| format!("cannot open {}", entry.path().display()))?;
            builder
                .append_data(&mut header, rel_str, file)
                .with_context(|| format!("cannot add {rel_str} to the bundle"))?;
            packed.files.push(rel_str.to_owned());
            packed.bytes += meta.len();
        } else if file_type.is_symlink() {
            bail!(
                "{rel_str} is a symbolic link; bundles carry regular files only \
                 (copy the target in, or list it in {IGNORE_FILE})"
            );
        } else {
            bail!("{rel_str} is not a regular file or directory (list it in {IGNORE_FILE})");
        }
    }

    let gz = builder
        .into_inner()
        .context("cannot finish the tar archive")?;
    let mut out = gz.finish().context("cannot finish gzip compression")?;
    out.flush().context("cannot flush the bundle")?;
    Ok(packed)
}

/// Compressed size above which a deploy stops (the control plane's default
/// upload limit, `CPUB_MAX_UPLOAD_BYTES`).
pub const MAX_UPLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Uncompressed size above which a deploy stops (the control plane's
/// default, `CPUB_MAX_BUNDLE_BYTES`).
pub const MAX_BUNDLE_BYTES: u64 = 512 * 1024 * 1024;
/// A file this large gets a warning (is it meant to be deployed?).
pub const LARGE_FILE_BYTES: u64 = 50 * 1024 * 1024;
/// Files read for secret patterns are at most this large.
const SCAN_BYTES: u64 = 1024 * 1024;

/// What the checks before an upload found: errors stop the deploy (unless
/// `--force`), warnings are printed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Directories that are usually build or tool output, with what to do.
const USUALLY_IGNORED: &[(&str, &str)] = &[
    ("node_modules", "dependencies are installed by the build"),
    (
        "target",
        "Rust build output; keep only the binary you deploy",
    ),
    (".venv", "a Python virtual environment"),
    ("venv", "a Python virtual environment"),
    ("__pycache__", "Python byte code"),
    (".idea", "editor settings"),
    (".vscode", "editor settings"),
    (".terraform", "Terraform state and providers"),
];

/// Names of files that hold credentials.
fn secret_file(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let lower = name.to_ascii_lowercase();
    if lower == ".env"
        || (lower.starts_with(".env.")
            && !["example", "sample", "template", "dist"]
                .iter()
                .any(|s| lower.ends_with(s)))
    {
        return Some("an environment file (secrets belong in `cpub env set`, not in the bundle)");
    }
    if ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"].contains(&lower.as_str()) {
        return Some("an SSH private key");
    }
    if lower.ends_with(".p12") || lower.ends_with(".pfx") || lower.ends_with(".jks") {
        return Some("a key store");
    }
    if [".netrc", ".git-credentials", ".pgpass", ".npmrc", ".pypirc"].contains(&lower.as_str()) {
        return Some("a credentials file");
    }
    if path.ends_with(".aws/credentials")
        || path.ends_with(".docker/config.json")
        || path.ends_with(".kube/config")
        || lower == "application_default_credentials.json"
        || (lower.ends_with(".json") && lower.contains("service-account"))
    {
        return Some("cloud credentials");
    }
    None
}

/// A secret in a file's text: a private key block or an AWS access key id.
fn secret_text(text: &[u8]) -> Option<&'static str> {
    let find = |needle: &[u8]| text.windows(needle.len()).position(|w| w == needle);
    if let Some(at) = find(b"-----BEGIN ") {
        let rest = &text[at..text.len().min(at + 64)];
        if rest.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Some("a private key");
        }
    }
    let aws = text.windows(20).any(|w| {
        (w.starts_with(b"AKIA") || w.starts_with(b"ASIA"))
            && w[4..]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    aws.then_some("an AWS access key id")
}

/// Checks a packed bundle before it is uploaded: its size, files that look
/// like secrets, a `binary` entrypoint's architecture and linking, a
/// Containerfile's bases, and directories that are usually left out.
pub fn check(
    dir: &Path,
    manifest: &containerpub_wire::Manifest,
    packed: &Packed,
    compressed: u64,
) -> Findings {
    use containerpub_wire::manifest::Runtime;
    let mut found = Findings::default();
    let hint = format!("list it in {IGNORE_FILE}");
    if compressed > MAX_UPLOAD_BYTES {
        found.errors.push(format!(
            "the bundle is {} MiB compressed; the control plane takes {} MiB by default",
            compressed >> 20,
            MAX_UPLOAD_BYTES >> 20
        ));
    }
    if packed.bytes > MAX_BUNDLE_BYTES {
        found.errors.push(format!(
            "the bundle holds {} MiB; the control plane takes {} MiB by default",
            packed.bytes >> 20,
            MAX_BUNDLE_BYTES >> 20
        ));
    }
    let mut ignored: std::collections::BTreeMap<&str, (usize, &str)> = Default::default();
    for file in &packed.files {
        let path = dir.join(file);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if let Some(what) = secret_file(file) {
            found
                .errors
                .push(format!("{file} looks like {what}; {hint}"));
        } else if size <= SCAN_BYTES
            && let Ok(text) = std::fs::read(&path)
            && let Some(what) = secret_text(&text)
        {
            found.errors.push(format!("{file} contains {what}; {hint}"));
        }
        if size > LARGE_FILE_BYTES {
            found.warnings.push(format!(
                "{file} is {} MiB: is it meant to be deployed? ({hint})",
                size >> 20
            ));
        }
        let entry = manifest
            .entrypoint
            .as_deref()
            .map(|e| e.trim_start_matches("./"));
        for (dir_name, why) in USUALLY_IGNORED {
            let inside = file.split('/').rev().skip(1).any(|part| part == *dir_name);
            if inside && entry.is_none_or(|e| e != file) {
                ignored.entry(dir_name).or_insert((0, why)).0 += 1;
            }
        }
    }
    for (dir_name, (count, why)) in ignored {
        found.warnings.push(format!(
            "{count} files under {dir_name}/ ({why}); {IGNORE_FILE} can leave them out"
        ));
    }
    match (manifest.runtime, manifest.entrypoint.as_deref()) {
        (Runtime::Binary, Some(entry)) => {
            let path = dir.join(entry.trim_start_matches("./"));
            match std::fs::File::open(&path) {
                Ok(file) => {
                    let mut head = Vec::new();
                    let _ = std::io::Read::read_to_end(
                        &mut std::io::Read::take(file, 64 * 1024),
                        &mut head,
                    );
                    if let Err(why) = containerpub_wire::elf::check_x86_64(&head) {
                        found.errors.push(format!("entrypoint {entry} {why}"));
                    }
                    let mode = std::fs::metadata(&path)
                        .map(|m| m.permissions().mode())
                        .unwrap_or(0);
                    if mode & 0o111 == 0 {
                        found.errors.push(format!(
                            "entrypoint {entry} is not executable (chmod +x {entry})"
                        ));
                    }
                }
                Err(err) => found
                    .errors
                    .push(format!("entrypoint {entry} cannot be read: {err}")),
            }
        }
        (Runtime::Container, _) => {
            if let Ok(text) = std::fs::read_to_string(dir.join(containerpub_wire::CONTAINERFILE)) {
                let mut stages: Vec<String> = Vec::new();
                for line in text.lines() {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    if !words
                        .first()
                        .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
                    {
                        continue;
                    }
                    let args: Vec<&str> = words[1..]
                        .iter()
                        .copied()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    let Some(base) = args.first() else { continue };
                    if !base.eq_ignore_ascii_case("scratch")
                        && !stages.iter().any(|s| s.eq_ignore_ascii_case(base))
                    {
                        found.warnings.push(format!(
                            "{}: FROM {base}: the platform pulls nothing; the build works only if \
                             the control plane allows this base (CPUB_BUILD_BASE_IMAGES); \
                             `FROM scratch` always works",
                            containerpub_wire::CONTAINERFILE
                        ));
                    }
                    if let [_, as_word, stage] = args.as_slice()
                        && as_word.eq_ignore_ascii_case("AS")
                    {
                        stages.push((*stage).to_owned());
                    }
                }
            }
        }
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use super::*;

    fn write(root: &Path, rel: &str, text: &str, mode: u32) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Unpacks an archive into path → (entry type, mode, contents).
    fn unpack(bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, u32, String)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let mut out = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_str().unwrap().to_owned();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            out.insert(path, (kind, mode, text));
        }
        out
    }

    fn sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "cpub.toml", "name = \"hello\"\n", 0o644);
        write(root, "bin/hello", "#!/bin/sh\necho hi\n", 0o755);
        write(root, "src/main.rs", "fn main() {}\n", 0o644);
        write(root, "notes.log", "debug\n", 0o644);
        write(root, "logs/today.log", "debug\n", 0o644);
        write(root, "target/debug/junk", "x", 0o644);
        write(root, ".env.example", "A=1\n", 0o600);
        write(root, ".gitignore", "bin/\n", 0o644);
        write(root, ".git/HEAD", "ref: refs/heads/main\n", 0o644);
        write(root, ".git/objects/ab/cdef", "blob", 0o444);
        write(root, "sub/.cpubignore", "secret.txt\n", 0o644);
        write(root, "sub/secret.txt", "s3cr3t", 0o644);
        write(root, "sub/kept.txt", "kept", 0o644);
        write(root, IGNORE_FILE, "*.log\n/target/\n", 0o644);
        dir
    }

    #[test]
    fn packs_relative_paths_honouring_cpubignore_only() {
        let dir = sample();
        let mut bytes = Vec::new();
        let packed = pack(dir.path(), &mut bytes).unwrap();
        let entries = unpack(&bytes);
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                ".cpubignore",
                ".env.example",
                ".gitignore",
                "bin/",
                "bin/hello",
                "cpub.toml",
                "logs/",
                "src/",
                "src/main.rs",
                "sub/",
                "sub/.cpubignore",
                "sub/kept.txt",
            ]
        );
        for name in &names {
            assert!(
                !name.starts_with('/') && !name.contains(".."),
                "{name} not relative"
            );
        }
        assert_eq!(entries["cpub.toml"].2, "name = \"hello\"\n");
        assert_eq!(entries["sub/kept.txt"].2, "kept");
        assert!(packed.contains("bin/hello") && packed.contains("./cpub.toml"));
        assert!(!packed.contains("sub/secret.txt"));
        assert_eq!(packed.files.len(), 8);
        assert_eq!(
            packed.bytes,
            entries.values().map(|e| e.2.len() as u64).sum::<u64>()
        );
    }

    #[test]
    fn keeps_executables_executable() {
        let dir = sample();
        let mut bytes = Vec::new();
        pack(dir.path(), &mut bytes).unwrap();
        let entries = unpack(&bytes);
        assert_eq!(entries["bin/hello"].0, tar::EntryType::Regular);
        assert_eq!(entries["bin/hello"].1, 0o755);
        assert_eq!(entries["cpub.toml"].1, 0o644);
        assert_eq!(
            entries[".env.example"].1, 0o644,
            "owner-only files become readable"
        );
        assert_eq!(entries["bin/"].0, tar::EntryType::Directory);
        assert_eq!(entries["bin/"].1, 0o755);
    }

    #[test]
    fn archive_is_deterministic() {
        let dir = sample();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        pack(dir.path(), &mut a).unwrap();
        std::fs::write(dir.path().join("cpub.toml"), "name = \"hello\"\n").unwrap();
        pack(dir.path(), &mut b).unwrap();
        assert_eq!(
            a, b,
            "rewriting a file with the same content changed the archive"
        );
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = sample();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
        let err = pack(dir.path(), Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("passwd") && err.contains("symbolic link"),
            "{err}"
        );
        // ...unless ignored.
        std::fs::write(dir.path().join(IGNORE_FILE), "passwd\n").unwrap();
        pack(dir.path(), Vec::new()).unwrap();
    }
    fn manifest(text: &str) -> containerpub_wire::Manifest {
        containerpub_wire::Manifest::parse(text).unwrap()
    }

    fn checked(root: &Path, m: &containerpub_wire::Manifest) -> Findings {
        let mut out = Vec::new();
        let packed = pack(root, &mut out).unwrap();
        check(root, m, &packed, out.len() as u64)
    }

    #[test]
    fn secrets_binaries_and_hints_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let m = manifest("name = \"hello\"\nruntime = \"binary\"\nentrypoint = \"bin/hello\"\n");
        write(root, "cpub.toml", "", 0o644);
        let elf = containerpub_wire::elf::fake_elf(62, &[1, 1]);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/hello"), &elf).unwrap();
        std::fs::set_permissions(
            root.join("bin/hello"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        write(root, ".env.example", "KEY=\n", 0o644);
        assert_eq!(checked(root, &m), Findings::default(), "a clean bundle");

        write(root, ".env", "KEY=1\n", 0o644);
        write(
            root,
            "conf/deploy.txt",
            "x\n-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
            0o644,
        );
        write(root, "conf/aws.txt", "key = AKIAIOSFODNN7EXAMPLE\n", 0o644);
        write(root, "home/.aws/credentials", "[default]\n", 0o644);
        write(root, "node_modules/a/index.js", "", 0o644);
        write(root, "node_modules/b/index.js", "", 0o644);
        let found = checked(root, &m);
        let errors = found.errors.join("\n");
        for expected in [
            ".env looks like an environment file",
            "conf/deploy.txt contains a private key",
            "conf/aws.txt contains an AWS access key id",
            "home/.aws/credentials looks like cloud credentials",
        ] {
            assert!(errors.contains(expected), "{expected:?} in\n{errors}");
        }
        assert_eq!(found.errors.len(), 4, "{errors}");
        assert_eq!(
            found.warnings,
            [
                "2 files under node_modules/ (dependencies are installed by the build); .cpubignore can leave them out"
            ]
        );

        // Another architecture, another dynamic loader than glibc's, no execute bit.
        for (bytes, mode, expected) in [
            (
                containerpub_wire::elf::fake_elf(183, &[1]),
                0o755,
                "machine 183",
            ),
            (
                containerpub_wire::elf::fake_elf_with_interp(
                    62,
                    &[6, 3, 1],
                    "/lib/ld-musl-x86_64.so.1",
                ),
                0o755,
                "dynamically linked against",
            ),
            (b"#!/bin/sh\necho hi\n".to_vec(), 0o755, "not an ELF"),
            (elf.clone(), 0o644, "not executable"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "cpub.toml", "", 0o644);
            std::fs::create_dir_all(dir.path().join("bin")).unwrap();
            std::fs::write(dir.path().join("bin/hello"), &bytes).unwrap();
            std::fs::set_permissions(
                dir.path().join("bin/hello"),
                std::fs::Permissions::from_mode(mode),
            )
            .unwrap();
            let errors = checked(dir.path(), &m).errors.join("\n");
            assert!(errors.contains(expected), "{expected:?} in {errors}");
        }
    }

    #[test]
    fn containerfile_bases_other_than_scratch_and_stages_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest("name = \"web\"\nruntime = \"container\"\n");
        write(dir.path(), "cpub.toml", "", 0o644);
        write(
            dir.path(),
            "Containerfile",
            "FROM scratch AS build\nFROM --platform=x build\nFROM docker.io/library/alpine:3\n",
            0o644,
        );
        let found = checked(dir.path(), &m);
        assert!(found.errors.is_empty(), "{:?}", found.errors);
        assert_eq!(found.warnings.len(), 1, "{:?}", found.warnings);
        assert!(found.warnings[0].contains("FROM docker.io/library/alpine:3"));
    }
}
