//! Bundle validation: reads an uploaded `.tar.gz` once, rejects anything
//! unsafe (naming the entry), and writes an uncompressed, normalised build
//! context tar. Nothing is extracted to disk.
//!
//! Rejected: absolute paths, `..` components, symlinks whose target is
//! absolute or leaves the bundle, hardlinks to anything but an earlier
//! regular file, paths that pass through a symlink, device/fifo/other entry
//! types, duplicate paths, more entries than the limit, more decompressed
//! bytes than the limit (counted while reading: gzip bombs stop early), and
//! input that is not a gzip-compressed tar.
//!
//! Synchronous: run it in `spawn_blocking`.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use containerpub_wire::manifest::Runtime;
use containerpub_wire::{MANIFEST_FILE, Manifest};
use flate2::read::GzDecoder;
use tar::{EntryType, Header};

use crate::config::Limits;
use crate::elf;
use crate::error::Error;

/// Largest accepted `cpub.toml`.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// The Containerfile of a `runtime = "container"` bundle, at its root.
pub const CONTAINERFILE: &str = "Containerfile";
/// Name of the executable inside a generated `runtime = "binary"` context.
const BINARY_IN_CONTEXT: &str = "function";
/// Bytes of the entrypoint kept in memory for the ELF check.
const ELF_HEAD_BYTES: u64 = 64 * 1024;

/// A validated bundle, ready to build.
#[derive(Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Uncompressed build context (tar) inside the work directory.
    pub context_tar: PathBuf,
    /// Containerfile path inside the context.
    pub containerfile: String,
}

/// What an entry of the bundle is, after normalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// Resolved target, relative to the bundle root.
    Symlink(String),
    /// The regular file it links to.
    Hardlink(String),
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::bad_request(field, message)
}

/// Validates the `.tar.gz` at `gz_path` for function `name`, writing build
/// context files into `work_dir` (which the caller removes).
pub fn prepare(
    gz_path: &Path,
    work_dir: &Path,
    name: &str,
    limits: &Limits,
) -> Result<Bundle, Error> {
    let file = File::open(gz_path)?;
    prepare_from(file, work_dir, name, limits)
}

/// [`prepare`] over any reader of the `.tar.gz` bytes.
pub fn prepare_from(
    gz: impl Read,
    work_dir: &Path,
    name: &str,
    limits: &Limits,
) -> Result<Bundle, Error> {
    let context_tar = work_dir.join("context.tar");
    let scan = scan(gz, &context_tar, limits)?;
    let text = scan.manifest.ok_or_else(|| {
        bad(
            MANIFEST_FILE,
            format!("the bundle has no {MANIFEST_FILE} at its root"),
        )
    })?;
    let manifest = Manifest::parse(&text).map_err(|e| {
        let field = if e.field.is_empty() {
            MANIFEST_FILE.to_owned()
        } else {
            e.field.clone()
        };
        bad(field, e.to_string())
    })?;
    if manifest.name != name {
        return Err(bad(
            "name",
            format!(
                "{MANIFEST_FILE} says name = {:?} but the bundle was deployed as {name:?}",
                manifest.name
            ),
        ));
    }
    match manifest.runtime {
        Runtime::Container => {
            match scan.kinds.get(CONTAINERFILE) {
                Some(Kind::File | Kind::Hardlink(_)) => {}
                Some(_) => {
                    return Err(bad(CONTAINERFILE, "Containerfile must be a regular file"));
                }
                None => {
                    return Err(bad(
                        CONTAINERFILE,
                        "runtime = \"container\" needs a Containerfile at the bundle root",
                    ));
                }
            }
            Ok(Bundle {
                manifest,
                context_tar,
                containerfile: CONTAINERFILE.to_owned(),
            })
        }
        Runtime::Binary => {
            let entrypoint = manifest.entrypoint.clone().unwrap_or_default();
            let path = normalize(&entrypoint).map_err(|m| bad("entrypoint", m))?;
            let stored = match scan.kinds.get(&path) {
                Some(Kind::File) => path.clone(),
                Some(Kind::Hardlink(target)) => target.clone(),
                Some(Kind::Symlink(_)) => {
                    return Err(bad(
                        "entrypoint",
                        format!(
                            "entrypoint {entrypoint:?} is a symlink; it must be a regular file"
                        ),
                    ));
                }
                Some(Kind::Dir) => {
                    return Err(bad(
                        "entrypoint",
                        format!("entrypoint {entrypoint:?} is a directory"),
                    ));
                }
                None => {
                    return Err(bad(
                        "entrypoint",
                        format!("entrypoint {entrypoint:?} is not in the bundle"),
                    ));
                }
            };
            let binary_tar = work_dir.join("binary.tar");
            binary_context(&context_tar, &stored, &entrypoint, &manifest, &binary_tar)?;
            // The full context is not needed for a binary build.
            let _ = std::fs::remove_file(&context_tar);
            Ok(Bundle {
                manifest,
                context_tar: binary_tar,
                containerfile: CONTAINERFILE.to_owned(),
            })
        }
    }
}

/// Counts decompressed bytes; reading past `limit` fails (and `over` tells why).
struct Counting<R> {
    inner: R,
    read: u64,
    limit: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            self.over.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        Ok(n)
    }
}

struct Scan {
    manifest: Option<String>,
    kinds: HashMap<String, Kind>,
}

fn scan(gz: impl Read, out_path: &Path, limits: &Limits) -> Result<Scan, Error> {
    let mut input = BufReader::new(gz);
    let head = input.fill_buf()?;
    if head.len() < 2 || head[..2] != [0x1f, 0x8b] {
        return Err(bad(
            "bundle",
            "the upload is not gzip-compressed (expected a .tar.gz)",
        ));
    }
    let over = Rc::new(Cell::new(false));
    // Tar framing (512-byte headers, padding) on top of the file bytes.
    let framing = (limits.max_bundle_files + 1).saturating_mul(2048) + (1 << 20);
    let counting = Counting {
        inner: GzDecoder::new(input),
        read: 0,
        limit: limits.max_bundle_bytes.saturating_add(framing),
        over: over.clone(),
    };
    let too_big = || {
        bad(
            "bundle",
            format!(
                "the bundle is larger than {} bytes when decompressed",
                limits.max_bundle_bytes
            ),
        )
    };
    let stream_error = |err: io::Error, over: &Cell<bool>| {
        if over.get() {
            too_big()
        } else {
            bad(
                "bundle",
                format!("the upload is not a valid .tar.gz: {err}"),
            )
        }
    };

    let mut archive = tar::Archive::new(counting);
    let mut out = tar::Builder::new(BufWriter::new(File::create(out_path)?));
    let mut scan = Scan {
        manifest: None,
        kinds: HashMap::new(),
    };
    let mut entries_seen: u64 = 0;
    let mut file_bytes: u64 = 0;

    for entry in archive.entries().map_err(|e| stream_error(e, &over))? {
        let mut entry = entry.map_err(|e| stream_error(e, &over))?;
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            continue;
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let raw_path = String::from_utf8(raw_path)
            .map_err(|_| bad(shown.clone(), "entry path is not valid UTF-8"))?;
        entries_seen += 1;
        if entries_seen > limits.max_bundle_files {
            return Err(bad(
                "bundle",
                format!(
                    "the bundle has more than {} entries (files, directories, links)",
                    limits.max_bundle_files
                ),
            ));
        }
        let path = normalize(&raw_path).map_err(|m| bad(raw_path.clone(), m))?;
        if path.is_empty() {
            if entry_type == EntryType::Directory {
                continue; // "./": the root itself
            }
            return Err(bad(raw_path, "entry has an empty path"));
        }
        let kind = match entry_type {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                file_bytes = file_bytes.saturating_add(size);
                if file_bytes > limits.max_bundle_bytes {
                    return Err(too_big());
                }
                let mode = if entry.header().mode().unwrap_or(0o644) & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                let mut header = file_header(EntryType::Regular, mode, &entry);
                header.set_size(size);
                if path == MANIFEST_FILE {
                    if size > MAX_MANIFEST_BYTES {
                        return Err(bad(
                            MANIFEST_FILE,
                            format!(
                                "{MANIFEST_FILE} is {size} bytes; the limit is {MAX_MANIFEST_BYTES}"
                            ),
                        ));
                    }
                    let mut text = Vec::with_capacity(size as usize);
                    (&mut entry)
                        .take(MAX_MANIFEST_BYTES)
                        .read_to_end(&mut text)
                        .map_err(|e| stream_error(e, &over))?;
                    let text = String::from_utf8(text).map_err(|_| {
                        bad(MANIFEST_FILE, format!("{MANIFEST_FILE} is not valid UTF-8"))
                    })?;
                    out.append_data(&mut header, &path, text.as_bytes())?;
                    scan.manifest = Some(text);
                } else {
                    append_file(&mut out, &mut header, &path, &mut entry, &over, too_big)?;
                }
                Kind::File
            }
            EntryType::Directory => {
                let mut header = file_header(EntryType::Directory, 0o755, &entry);
                header.set_size(0);
                out.append_data(&mut header, &path, io::empty())?;
                Kind::Dir
            }
            EntryType::Symlink => {
                let target = link_name(&entry, &raw_path)?;
                let resolved =
                    symlink_target(&path, &target).map_err(|m| bad(raw_path.clone(), m))?;
                let mut header = file_header(EntryType::Symlink, 0o777, &entry);
                header.set_size(0);
                out.append_link(&mut header, &path, &target)?;
                Kind::Symlink(resolved)
            }
            EntryType::Link => {
                let target = link_name(&entry, &raw_path)?;
                let target = normalize(&target)
                    .map_err(|m| bad(raw_path.clone(), format!("hardlink target: {m}")))?;
                let original = match scan.kinds.get(&target) {
                    Some(Kind::File) => target,
                    Some(Kind::Hardlink(original)) => original.clone(),
                    _ => {
                        return Err(bad(
                            raw_path,
                            format!(
                                "hardlink target {target:?} is not an earlier regular file of the bundle"
                            ),
                        ));
                    }
                };
                let mut header = file_header(EntryType::Link, 0o644, &entry);
                header.set_size(0);
                out.append_link(&mut header, &path, &original)?;
                Kind::Hardlink(original)
            }
            other => {
                return Err(bad(
                    raw_path,
                    format!("unsupported entry type {}", describe(other)),
                ));
            }
        };
        match scan.kinds.get(&path) {
            Some(Kind::Dir) if kind == Kind::Dir => {}
            Some(_) => return Err(bad(raw_path, "the bundle holds this path twice")),
            None => {
                scan.kinds.insert(path, kind);
            }
        }
    }
    out.into_inner()?.flush()?;
    check_no_symlink_parents(&scan.kinds)?;
    Ok(scan)
}

/// Copies a file's data into the context, mapping a decompression failure
/// (or the size limit) to a client error.
fn append_file<W: Write, R: Read>(
    out: &mut tar::Builder<W>,
    header: &mut Header,
    path: &str,
    data: &mut R,
    over: &Cell<bool>,
    too_big: impl Fn() -> Error,
) -> Result<(), Error> {
    // Read through a wrapper that remembers whether the *input* failed, so a
    // corrupt upload (client error) is told apart from a full disk (ours).
    struct Tracked<'a, R> {
        inner: &'a mut R,
        failed: Option<io::Error>,
    }
    impl<R: Read> Read for Tracked<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf).inspect_err(|e| {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            })
        }
    }
    let mut tracked = Tracked {
        inner: data,
        failed: None,
    };
    match out.append_data(header, path, &mut tracked) {
        Ok(()) => Ok(()),
        Err(_) if over.get() => Err(too_big()),
        Err(_) if tracked.failed.is_some() => {
            let err = tracked
                .failed
                .take()
                .unwrap_or_else(|| io::Error::other("read failed"));
            Err(bad(
                "bundle",
                format!("the upload is not a valid .tar.gz: {err}"),
            ))
        }
        Err(err) => Err(err.into()),
    }
}

/// A fresh header owned by root, keeping the entry's mtime.
fn file_header<R: Read>(entry_type: EntryType, mode: u32, entry: &tar::Entry<'_, R>) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(entry.header().mtime().unwrap_or(0));
    header
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, raw_path: &str) -> Result<String, Error> {
    let target = entry
        .link_name_bytes()
        .ok_or_else(|| bad(raw_path, "link has no target"))?
        .into_owned();
    String::from_utf8(target).map_err(|_| bad(raw_path, "link target is not valid UTF-8"))
}

fn describe(entry_type: EntryType) -> &'static str {
    match entry_type {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        EntryType::GNUSparse => "sparse file",
        _ => "(only files, directories and links are allowed)",
    }
}

/// `a/./b//c/` → `a/b/c`. Rejects absolute paths and `..`.
pub fn normalize(path: &str) -> Result<String, String> {
    if path.starts_with('/') {
        return Err(format!("absolute path {path:?} is not allowed in a bundle"));
    }
    if path.contains('\0') {
        return Err("path contains NUL".into());
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("path {path:?} has a `..` component")),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Resolves a symlink target relative to the link's directory; the result
/// must stay inside the bundle.
fn symlink_target(link: &str, target: &str) -> Result<String, String> {
    if target.is_empty() {
        return Err("symlink has an empty target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symlink target {target:?} is absolute"));
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("symlink target {target:?} leaves the bundle"));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

/// Lexical checks are only sound when no path goes through a symlink:
/// reject entries below a symlink, and symlinks whose target does.
fn check_no_symlink_parents(kinds: &HashMap<String, Kind>) -> Result<(), Error> {
    let is_symlink = |p: &str| matches!(kinds.get(p), Some(Kind::Symlink(_)));
    let through_symlink = |path: &str| {
        path.match_indices('/')
            .map(|(i, _)| &path[..i])
            .find(|prefix| is_symlink(prefix))
            .map(str::to_owned)
    };
    let mut paths: Vec<&String> = kinds.keys().collect();
    paths.sort();
    for path in paths {
        if let Some(link) = through_symlink(path) {
            return Err(bad(
                path.clone(),
                format!("path goes through the symlink {link:?}"),
            ));
        }
        if let Some(Kind::Symlink(target)) = kinds.get(path)
            && let Some(link) = through_symlink(target)
        {
            return Err(bad(
                path.clone(),
                format!("symlink target goes through the symlink {link:?}"),
            ));
        }
    }
    Ok(())
}

/// Writes the context of a `runtime = "binary"` build: the executable as
/// `function` (mode 0755) and a generated `FROM scratch` Containerfile.
fn binary_context(
    context_tar: &Path,
    stored: &str,
    entrypoint: &str,
    manifest: &Manifest,
    out_path: &Path,
) -> Result<(), Error> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(context_tar)?));
    let mut out = tar::Builder::new(BufWriter::new(File::create(out_path)?));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != EntryType::Regular
            || *entry.path_bytes() != *stored.as_bytes()
        {
            continue;
        }
        let size = entry.size();
        let mut head = Vec::new();
        (&mut entry).take(ELF_HEAD_BYTES).read_to_end(&mut head)?;
        elf::check_static_x86_64(&head)
            .map_err(|m| bad("entrypoint", format!("entrypoint {entrypoint:?}: {m}")))?;
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o755);
        header.set_size(size);
        out.append_data(&mut header, BINARY_IN_CONTEXT, head.as_slice().chain(entry))?;
        let containerfile = generated_containerfile(manifest.port);
        let mut header = Header::new_gnu();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(containerfile.len() as u64);
        out.append_data(&mut header, CONTAINERFILE, containerfile.as_bytes())?;
        out.into_inner()?.flush()?;
        return Ok(());
    }
    Err(bad(
        "entrypoint",
        format!("entrypoint {entrypoint:?} is not in the bundle"),
    ))
}

/// The Containerfile of a static binary: nothing but the executable.
pub fn generated_containerfile(port: u16) -> String {
    format!(
        "FROM scratch\n\
         COPY {BINARY_IN_CONTEXT} /function\n\
         USER 65534:65534\n\
         ENV PORT={port}\n\
         EXPOSE {port}\n\
         ENTRYPOINT [\"/function\"]\n"
    )
}
