//! Bundle validation: reads an uploaded `.tar.gz` once, rejects anything
//! unsafe (naming the entry), and writes an uncompressed, normalised build
//! context tar. Nothing is extracted to disk.
//!
//! Rejected: absolute paths, `..` components, symlinks whose target is
//! absolute or leaves the bundle, hardlinks to anything but an earlier
//! regular file, paths that pass through a symlink, device/fifo/other entry
//! types, duplicate paths, more entries than the limit, more decompressed
//! bytes than the limit (counted while reading: gzip bombs stop early),
//! tar extension headers (PAX, GNU long name / long link) larger than a few
//! KiB (checked on the raw header stream before the `tar` crate, which reads
//! them whole into memory, sees them), sparse files, and input that is not a
//! whole gzip-compressed tar: the gzip stream is read to its end, so a
//! missing 8-byte trailer or a CRC32 / size mismatch is refused too.
//! Memory use per upload is a few KiB of headers plus the entry paths
//! (bounded by [`MAX_TOTAL_NAME_BYTES`]), whatever the archive holds.
//!
//! Synchronous: run it in `spawn_blocking`.
//!
//! Over 600 lines: about 880 of code and 640 of unit tests. The checks above
//! are one pass over one stream (the raw header scan, the tar reader and the
//! limits share its state), and each hostile archive of the tests is built
//! next to the rule it breaks.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use containerpub_wire::manifest::Runtime;
use containerpub_wire::{CONTAINERFILE, MANIFEST_FILE, Manifest};
use flate2::read::MultiGzDecoder;
use tar::{EntryType, Header};

use crate::config::Limits;
use crate::elf;
use crate::error::Error;
use crate::runtimes;

/// Largest accepted `cpub.toml`.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
/// Name of the executable inside a generated `runtime = "binary"` context.
const BINARY_IN_CONTEXT: &str = "function";
/// Bytes of the entrypoint kept in memory for the ELF check.
const ELF_HEAD_BYTES: u64 = 64 * 1024;
/// Largest GNU long-name / long-link extension (the `tar` crate reads one
/// whole into memory): a path longer than Linux's `PATH_MAX` is no path.
pub const MAX_LONG_NAME_BYTES: u64 = 4096;
/// Largest PAX extension header of one entry (also read whole by `tar`).
pub const MAX_PAX_BYTES: u64 = 64 * 1024;
/// Longest path or link target of an entry, after extensions.
pub const MAX_PATH_BYTES: usize = 4096;
/// Sum of all entry paths and link targets kept in memory while validating.
pub const MAX_TOTAL_NAME_BYTES: usize = 4 << 20;

/// A validated bundle, ready to build.
#[derive(Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Uncompressed build context (tar) inside the work directory.
    pub context_tar: PathBuf,
    /// Containerfile path inside the context.
    pub containerfile: String,
    /// The platform base image the generated Containerfile starts from
    /// (`crate::runtimes`), if any: it must be in the build store.
    pub base_image: Option<String>,
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
                base_image: None,
            })
        }
        Runtime::Binary => {
            let entrypoint = manifest.entrypoint.clone().unwrap_or_default();
            let stored = entry_file(&scan.kinds, &entrypoint)?;
            let binary_tar = work_dir.join("binary.tar");
            let linking =
                binary_context(&context_tar, &stored, &entrypoint, &manifest, &binary_tar)?;
            // The full context is not needed for a binary build.
            let _ = std::fs::remove_file(&context_tar);
            Ok(Bundle {
                manifest,
                context_tar: binary_tar,
                containerfile: CONTAINERFILE.to_owned(),
                base_image: match linking {
                    elf::Linking::Static => None,
                    elf::Linking::Glibc => Some(runtimes::Base::Debian.image()),
                },
            })
        }
        Runtime::Python | Runtime::Node => {
            let entrypoint = manifest.entrypoint.clone().unwrap_or_default();
            let path = entry_file(&scan.kinds, &entrypoint)?;
            let containerfile =
                runtimes::language_containerfile(manifest.runtime, &path, manifest.port)
                    .ok_or_else(|| bad("entrypoint", "cannot be written into a Containerfile"))?;
            let lang_tar = work_dir.join("language.tar");
            language_context(&context_tar, &containerfile, &lang_tar)?;
            let _ = std::fs::remove_file(&context_tar);
            let base = match manifest.runtime {
                Runtime::Python => runtimes::Base::Python,
                _ => runtimes::Base::Node,
            };
            Ok(Bundle {
                manifest,
                context_tar: lang_tar,
                containerfile: runtimes::GENERATED_CONTAINERFILE.to_owned(),
                base_image: Some(base.image()),
            })
        }
    }
}

/// The stored path of the regular file `entrypoint` names (a hardlink's
/// target), or a client error saying what it is instead.
fn entry_file(kinds: &HashMap<String, Kind>, entrypoint: &str) -> Result<String, Error> {
    let path = normalize(entrypoint).map_err(|m| bad("entrypoint", m))?;
    match kinds.get(&path) {
        Some(Kind::File) => Ok(path),
        Some(Kind::Hardlink(target)) => Ok(target.clone()),
        Some(Kind::Symlink(_)) => Err(bad(
            "entrypoint",
            format!("entrypoint {entrypoint:?} is a symlink; it must be a regular file"),
        )),
        Some(Kind::Dir) => Err(bad(
            "entrypoint",
            format!("entrypoint {entrypoint:?} is a directory"),
        )),
        None => Err(bad(
            "entrypoint",
            format!("entrypoint {entrypoint:?} is not in the bundle"),
        )),
    }
}

/// Writes the context of a `python` / `node` build: every entry of the
/// validated bundle (headers as `scan` normalised them: root-owned, 0644 /
/// 0755) and the generated Containerfile under
/// [`runtimes::GENERATED_CONTAINERFILE`] (a bundle file of that name is left
/// out).
fn language_context(context_tar: &Path, containerfile: &str, out_path: &Path) -> Result<(), Error> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(context_tar)?));
    let mut out = tar::Builder::new(BufWriter::new(File::create(out_path)?));
    for entry in archive.entries()? {
        let entry = entry?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if path.trim_end_matches('/') == runtimes::GENERATED_CONTAINERFILE {
            continue;
        }
        let mut header = entry.header().clone();
        match header.entry_type() {
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                out.append_link(&mut header, &path, &target)?;
            }
            _ => out.append_data(&mut header, &path, entry)?,
        }
    }
    let mut header = plain_header(0o644, containerfile.len() as u64);
    out.append_data(
        &mut header,
        runtimes::GENERATED_CONTAINERFILE,
        containerfile.as_bytes(),
    )?;
    out.into_inner()?.flush()?;
    Ok(())
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
    let refused: Rc<RefCell<Option<Error>>> = Rc::default();
    // Tar framing (512-byte headers, padding) on top of the file bytes.
    let framing = (limits.max_bundle_files + 1).saturating_mul(2048) + (1 << 20);
    let counting = Counting {
        // Every member of the gzip stream, each checked against its CRC32
        // and size trailer when read to its end (below).
        inner: MultiGzDecoder::new(input),
        read: 0,
        limit: limits.max_bundle_bytes.saturating_add(framing),
        over: over.clone(),
    };
    let guarded = HeaderGuard::new(counting, refused.clone());
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
        if let Some(refusal) = refused.borrow_mut().take() {
            refusal
        } else if over.get() {
            too_big()
        } else {
            invalid_stream(&err)
        }
    };

    let mut archive = tar::Archive::new(guarded);
    let mut out = tar::Builder::new(BufWriter::new(File::create(out_path)?));
    let mut scan = Scan {
        manifest: None,
        kinds: HashMap::new(),
    };
    let mut entries_seen: u64 = 0;
    let mut file_bytes: u64 = 0;
    // Path and link-target bytes held in `scan.kinds`.
    let mut name_bytes: usize = 0;

    for entry in archive.entries().map_err(|e| stream_error(e, &over))? {
        let mut entry = entry.map_err(|e| stream_error(e, &over))?;
        let entry_type = entry.header().entry_type();
        if entry_type == EntryType::XGlobalHeader {
            continue;
        }
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        if raw_path.len() > MAX_PATH_BYTES {
            let start: String = shown.chars().take(64).collect();
            return Err(bad(
                format!("{start}..."),
                format!(
                    "entry path is {} bytes long; the limit is {MAX_PATH_BYTES}",
                    raw_path.len()
                ),
            ));
        }
        name_bytes += raw_path.len();
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
                    append_file(&mut out, &mut header, &path, &mut entry, &|e| {
                        stream_error(e, &over)
                    })?;
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
                name_bytes += target.len();
                let resolved =
                    symlink_target(&path, &target).map_err(|m| bad(raw_path.clone(), m))?;
                let mut header = file_header(EntryType::Symlink, 0o777, &entry);
                header.set_size(0);
                out.append_link(&mut header, &path, &target)?;
                Kind::Symlink(resolved)
            }
            EntryType::Link => {
                let target = link_name(&entry, &raw_path)?;
                name_bytes += target.len();
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
        if name_bytes > MAX_TOTAL_NAME_BYTES {
            return Err(bad(
                "bundle",
                format!(
                    "the bundle's paths and link targets add up to more than {MAX_TOTAL_NAME_BYTES} bytes"
                ),
            ));
        }
        match scan.kinds.get(&path) {
            Some(Kind::Dir) if kind == Kind::Dir => {}
            Some(_) => return Err(bad(raw_path, "the bundle holds this path twice")),
            None => {
                scan.kinds.insert(path, kind);
            }
        }
    }
    // Whole archives only: read the gzip stream to its end (the tar's
    // end-of-archive blocks, then each member's CRC32 and size trailer,
    // which the decoder checks) before anything is kept.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream_error(e, &over))?;
    out.into_inner()?.flush()?;
    check_no_symlink_parents(&scan.kinds)?;
    Ok(scan)
}

/// A 400 for a stream the gzip decoder or the tar reader gave up on,
/// saying what was wrong in words a deployer can act on.
fn invalid_stream(err: &io::Error) -> Error {
    let text = err.to_string();
    let message = if err.kind() == io::ErrorKind::UnexpectedEof {
        "the upload is truncated: the gzip stream ends before its 8-byte trailer \
         (CRC32 and size); send the whole .tar.gz"
            .to_owned()
    } else if text.contains("does not have a matching checksum") {
        "the upload is corrupt: the gzip trailer's CRC32 or size does not match the data".to_owned()
    } else {
        format!("the upload is not a valid .tar.gz: {text}")
    };
    bad("bundle", message)
}

/// Sits between the decompressed stream and `tar::Archive` and follows the
/// tar framing itself (512-byte headers, data rounded up to 512 bytes, a
/// PAX `size` record overriding the next entry's size, exactly as `tar`
/// 0.4 does), so that a header announcing an oversized extension is refused
/// before `tar` allocates it. Holds one header block and at most one PAX
/// extension ([`MAX_PAX_BYTES`]). After the end-of-archive block it passes
/// bytes through (the trailer check drains them).
struct HeaderGuard<R> {
    inner: R,
    block: [u8; 512],
    /// Bytes of `block` already handed on, and held.
    pos: usize,
    len: usize,
    /// Data and padding bytes before the next header.
    data_left: u64,
    /// The PAX extension being read, and its bytes still to come.
    pax: Option<Vec<u8>>,
    pax_left: u64,
    /// The `size` of the last complete PAX extension, for the next entry.
    pax_size: Option<u64>,
    /// End of the archive (or a stream `tar` itself refuses): pass through.
    done: bool,
    refused: Rc<RefCell<Option<Error>>>,
}

impl<R: Read> HeaderGuard<R> {
    fn new(inner: R, refused: Rc<RefCell<Option<Error>>>) -> Self {
        Self {
            inner,
            block: [0; 512],
            pos: 0,
            len: 0,
            data_left: 0,
            pax: None,
            pax_left: 0,
            pax_size: None,
            done: false,
            refused,
        }
    }

    fn refuse(&self, field: &str, message: String) -> io::Error {
        let err = io::Error::other(message.clone());
        *self.refused.borrow_mut() = Some(bad(field, message));
        err
    }

    /// Reads the next header block and checks it; `false` at end of input.
    fn next_header(&mut self) -> io::Result<bool> {
        let mut got = 0;
        while got < self.block.len() {
            match self.inner.read(&mut self.block[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        (self.pos, self.len) = (0, got);
        if got == 0 {
            return Ok(false);
        }
        if got < self.block.len() || self.block.iter().all(|&b| b == 0) {
            // A short header (tar fails on it) or the end-of-archive block
            // (tar stops there).
            self.done = true;
            return Ok(true);
        }
        let header = Header::from_byte_slice(&self.block);
        let Ok(mut size) = header.entry_size() else {
            self.done = true; // tar refuses the same header
            return Ok(true);
        };
        let entry_type = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let extension = entry_type.is_gnu_longname()
            || entry_type.is_gnu_longlink()
            || entry_type.is_pax_local_extensions()
            || entry_type.is_pax_global_extensions();
        if !extension && let Some(pax_size) = self.pax_size.take() {
            size = pax_size;
        }
        if entry_type.is_gnu_sparse() {
            return Err(self.refuse("bundle", "sparse files are not supported".into()));
        }
        if recognized && (entry_type.is_gnu_longname() || entry_type.is_gnu_longlink()) {
            let what = if entry_type.is_gnu_longname() {
                "long-name"
            } else {
                "long-link"
            };
            if size > MAX_LONG_NAME_BYTES {
                return Err(self.refuse(
                    "bundle",
                    format!(
                        "a GNU {what} header (\"././@LongLink\") is {size} bytes; \
                         the limit is {MAX_LONG_NAME_BYTES}"
                    ),
                ));
            }
        }
        if recognized && entry_type.is_pax_local_extensions() {
            if size > MAX_PAX_BYTES {
                let name = String::from_utf8_lossy(&header.path_bytes()).into_owned();
                return Err(self.refuse(
                    "bundle",
                    format!(
                        "the PAX extended header {name:?} is {size} bytes; the limit is {MAX_PAX_BYTES}"
                    ),
                ));
            }
            self.pax = Some(Vec::with_capacity(size as usize));
            self.pax_left = size;
            if size == 0 {
                self.end_pax();
            }
        }
        self.data_left = size
            .checked_add(511)
            .map(|s| s & !511)
            .ok_or_else(|| self.refuse("bundle", format!("entry size {size} overflows")))?;
        Ok(true)
    }

    /// A complete PAX extension: remember its `size` as `tar` reads it.
    fn end_pax(&mut self) {
        if let Some(pax) = self.pax.take() {
            self.pax_size = pax_size(&pax);
        }
    }
}

/// The `size` record of a PAX extension, parsed as `tar` 0.4 does.
fn pax_size(pax: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(pax) {
        let extension = extension.ok()?;
        if extension.key() != Ok("size") {
            continue;
        }
        return extension.value().ok()?.parse().ok();
    }
    None
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.len {
                let n = buf.len().min(self.len - self.pos);
                buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return self.inner.read(buf);
            }
            if self.data_left > 0 {
                let want = buf
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                self.data_left -= n as u64;
                if let Some(pax) = self.pax.as_mut() {
                    let keep = n.min(usize::try_from(self.pax_left).unwrap_or(usize::MAX));
                    pax.extend_from_slice(&buf[..keep]);
                    self.pax_left -= keep as u64;
                    if self.pax_left == 0 {
                        self.end_pax();
                    }
                }
                return Ok(n);
            }
            if !self.next_header()? {
                return Ok(0);
            }
        }
    }
}

/// Copies a file's data into the context, mapping a failure of the input
/// (decompression, the size limit, a refused header) to a client error.
fn append_file<W: Write, R: Read>(
    out: &mut tar::Builder<W>,
    header: &mut Header,
    path: &str,
    data: &mut R,
    input_error: &dyn Fn(io::Error) -> Error,
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
        Err(_) if tracked.failed.is_some() => {
            let err = tracked
                .failed
                .take()
                .unwrap_or_else(|| io::Error::other("read failed"));
            Err(input_error(err))
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
/// must stay inside the bundle. `..` may only lead the target: those climb
/// the link's own directories, which are real ones (no entry lies below a
/// symlink), and the names after them are checked on the result. A `..`
/// after a name would undo, on paper, a name the kernel may resolve
/// through a symlink (`d -> .` makes `d/../x` the bundle's parent's `x`).
fn symlink_target(link: &str, target: &str) -> Result<String, String> {
    if target.is_empty() {
        return Err("symlink has an empty target".into());
    }
    if target.starts_with('/') {
        return Err(format!("symlink target {target:?} is absolute"));
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    let mut named = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if named => {
                return Err(format!(
                    "symlink target {target:?} has `..` after a name; write it as a path without going back"
                ));
            }
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("symlink target {target:?} leaves the bundle"));
                }
            }
            p => {
                named = true;
                parts.push(p);
            }
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
/// `function` (mode 0755) and a generated Containerfile (`FROM scratch` for
/// a static executable, the `debian` base for a glibc one).
fn binary_context(
    context_tar: &Path,
    stored: &str,
    entrypoint: &str,
    manifest: &Manifest,
    out_path: &Path,
) -> Result<elf::Linking, Error> {
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
        let linking = elf::check_x86_64(&head)
            .map_err(|m| bad("entrypoint", format!("entrypoint {entrypoint:?}: {m}")))?;
        let mut header = plain_header(0o755, size);
        out.append_data(&mut header, BINARY_IN_CONTEXT, head.as_slice().chain(entry))?;
        let containerfile = match linking {
            elf::Linking::Static => generated_containerfile(manifest.port),
            elf::Linking::Glibc => {
                runtimes::dynamic_binary_containerfile(BINARY_IN_CONTEXT, manifest.port)
            }
        };
        let mut header = plain_header(0o644, containerfile.len() as u64);
        out.append_data(&mut header, CONTAINERFILE, containerfile.as_bytes())?;
        out.into_inner()?.flush()?;
        return Ok(linking);
    }
    Err(bad(
        "entrypoint",
        format!("entrypoint {entrypoint:?} is not in the bundle"),
    ))
}

/// A regular file owned by root.
fn plain_header(mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
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

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Cursor;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// One entry of a test bundle, written with raw header bytes so unsafe
    /// paths (which `tar::Builder` refuses) can be expressed.
    pub(crate) enum T<'a> {
        File(&'a str, &'a [u8]),
        Exec(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Special(&'a str, EntryType),
        LongName(usize),
    }

    fn raw(path: &[u8], entry_type: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(entry_type);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..path.len()].copy_from_slice(path);
        gnu.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        h
    }

    pub(crate) fn tar_gz(entries: &[T<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for e in entries {
            match e {
                T::File(p, data) | T::Exec(p, data) => {
                    let mode = if matches!(e, T::Exec(..)) {
                        0o700
                    } else {
                        0o600
                    };
                    let h = raw(
                        p.as_bytes(),
                        EntryType::Regular,
                        data.len() as u64,
                        mode,
                        b"",
                    );
                    b.append(&h, *data).unwrap();
                }
                T::Dir(p) => b
                    .append(
                        &raw(p.as_bytes(), EntryType::Directory, 0, 0o700, b""),
                        io::empty(),
                    )
                    .unwrap(),
                T::Symlink(p, t) => b
                    .append(
                        &raw(p.as_bytes(), EntryType::Symlink, 0, 0o777, t.as_bytes()),
                        io::empty(),
                    )
                    .unwrap(),
                T::Hardlink(p, t) => b
                    .append(
                        &raw(p.as_bytes(), EntryType::Link, 0, 0o644, t.as_bytes()),
                        io::empty(),
                    )
                    .unwrap(),
                T::Special(p, t) => b
                    .append(&raw(p.as_bytes(), *t, 0, 0o644, b""), io::empty())
                    .unwrap(),
                T::LongName(n) => {
                    let h = raw(
                        b"././@LongLink",
                        EntryType::GNULongName,
                        *n as u64,
                        0o644,
                        b"",
                    );
                    b.append(&h, io::repeat(b'a').take(*n as u64)).unwrap();
                    b.append(&raw(b"x", EntryType::Regular, 0, 0o644, b""), io::empty())
                        .unwrap();
                }
            }
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    const LIMITS: Limits = Limits {
        max_upload_bytes: 1 << 20,
        max_bundle_bytes: 1 << 20,
        max_bundle_files: 20,
    };
    pub(crate) const CONTAINER_TOML: &[u8] = b"name = \"hello\"\nruntime = \"container\"\n";
    const BINARY_TOML: &[u8] =
        b"name = \"hello\"\nruntime = \"binary\"\nentrypoint = \"./bin/hello\"\nport = 9000\n";

    fn run(entries: &[T<'_>]) -> (Result<Bundle, Error>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let result = prepare_from(Cursor::new(tar_gz(entries)), dir.path(), "hello", &LIMITS);
        (result, dir)
    }

    /// The (field, message) of a 400, or a panic.
    fn rejected(entries: &[T<'_>]) -> (String, String) {
        match run(entries).0 {
            Err(err @ Error::BadRequest { .. }) => {
                assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
                let Error::BadRequest { field, message } = err else {
                    unreachable!()
                };
                (field.expect("a 400 names its field"), message)
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    fn listing(tar_path: &Path) -> Vec<(String, EntryType, u32, u64)> {
        let mut a = tar::Archive::new(File::open(tar_path).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn good_container_bundle() {
        let (result, _dir) = run(&[
            T::Dir("./"),
            T::File("./cpub.toml", CONTAINER_TOML),
            T::File("Containerfile", b"FROM scratch\nCOPY app.txt /app.txt\n"),
            T::Dir("src/"),
            T::Exec("src//./run.sh", b"#!/bin/sh\n"),
            T::Symlink("src/link", "../Containerfile"),
            T::Hardlink("src/again", "src/run.sh"),
        ]);
        let bundle = result.unwrap();
        assert_eq!(bundle.containerfile, "Containerfile");
        assert_eq!(bundle.manifest.name, "hello");
        let entries = listing(&bundle.context_tar);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "cpub.toml",
                "Containerfile",
                "src",
                "src/run.sh",
                "src/link",
                "src/again"
            ]
        );
        // Normalised: owned by root, modes 0644 / 0755.
        assert!(entries.iter().all(|e| e.3 == 0));
        assert_eq!(entries[0].2, 0o644);
        assert_eq!(entries[3].2, 0o755);
        assert_eq!(entries[4].1, EntryType::Symlink);
        assert_eq!(entries[5].1, EntryType::Link);
    }

    #[test]
    fn good_binary_bundle_gets_a_generated_containerfile() {
        let elf = crate::elf::tests::fake_elf(62, &[1, 1]);
        let (result, _dir) = run(&[
            T::File("cpub.toml", BINARY_TOML),
            T::File("bin/hello", &elf),
        ]);
        let bundle = result.unwrap();
        let entries = listing(&bundle.context_tar);
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].0.as_str(), entries[0].2), ("function", 0o755));
        assert_eq!(entries[1].0, "Containerfile");
        let mut a = tar::Archive::new(File::open(&bundle.context_tar).unwrap());
        let mut files = a.entries().unwrap();
        let mut binary = Vec::new();
        files
            .next()
            .unwrap()
            .unwrap()
            .read_to_end(&mut binary)
            .unwrap();
        assert_eq!(binary, elf);
        let mut containerfile = String::new();
        files
            .next()
            .unwrap()
            .unwrap()
            .read_to_string(&mut containerfile)
            .unwrap();
        assert_eq!(containerfile, generated_containerfile(9000));
        assert_eq!(bundle.base_image, None, "a static binary runs FROM scratch");
        assert!(
            containerfile.contains("FROM scratch") && containerfile.contains("USER 65534:65534")
        );
        assert!(containerfile.contains("ENV PORT=9000") && containerfile.contains("EXPOSE 9000"));
    }

    #[test]
    fn python_and_node_bundles_carry_every_file_and_a_generated_containerfile() {
        let toml = b"name = \"hello\"\nruntime = \"python\"\nentrypoint = \"app/server.py\"\n";
        let (result, _dir) = run(&[
            T::File("cpub.toml", toml),
            T::Dir("app/"),
            T::File("app/server.py", b"print(1)\n"),
            T::File("vendor/dep.py", b"X = 1\n"),
            T::Symlink("app/dep.py", "../vendor/dep.py"),
            T::File(".cpub-Containerfile", b"FROM localhost/cpub-fn-other:v1\n"),
        ]);
        let bundle = result.unwrap();
        assert_eq!(
            bundle.base_image.as_deref(),
            Some("localhost/cpub-base/python:1")
        );
        assert_eq!(bundle.containerfile, runtimes::GENERATED_CONTAINERFILE);
        let names: Vec<String> = listing(&bundle.context_tar)
            .into_iter()
            .map(|e| e.0)
            .collect();
        for want in ["cpub.toml", "app/server.py", "vendor/dep.py", "app/dep.py"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == runtimes::GENERATED_CONTAINERFILE)
                .count(),
            1,
            "{names:?}"
        );
        let text = crate::containerfile::read_from_context(
            &bundle.context_tar,
            runtimes::GENERATED_CONTAINERFILE,
        )
        .unwrap();
        assert_eq!(
            Some(text),
            runtimes::language_containerfile(Runtime::Python, "app/server.py", 8080),
            "the bundle's own file of that name is replaced"
        );
        let toml = b"name = \"hello\"\nruntime = \"node\"\nentrypoint = \"server.js\"\n";
        let (field, msg) = rejected(&[T::File("cpub.toml", toml), T::Dir("server.js/")]);
        assert_eq!(field, "entrypoint");
        assert!(msg.contains("directory"), "{msg}");
        let (field, msg) = rejected(&[T::File("cpub.toml", toml)]);
        assert_eq!(field, "entrypoint");
        assert!(msg.contains("not in the bundle"), "{msg}");
    }

    #[test]
    fn glibc_binary_runs_on_the_debian_base_others_are_refused() {
        let elf = crate::elf::tests::fake_elf(62, &[6, 3, 1]);
        let (result, _dir) = run(&[
            T::File("cpub.toml", BINARY_TOML),
            T::File("bin/hello", &elf),
        ]);
        let bundle = result.unwrap();
        assert_eq!(
            bundle.base_image.as_deref(),
            Some("localhost/cpub-base/debian:1")
        );
        let text =
            crate::containerfile::read_from_context(&bundle.context_tar, CONTAINERFILE).unwrap();
        assert_eq!(
            text,
            runtimes::dynamic_binary_containerfile("function", 9000)
        );
        let musl =
            crate::elf::tests::fake_elf_with_interp(62, &[6, 3, 1], "/lib/ld-musl-x86_64.so.1");
        let (field, msg) = rejected(&[
            T::File("cpub.toml", BINARY_TOML),
            T::File("bin/hello", &musl),
        ]);
        assert_eq!(field, "entrypoint");
        assert!(msg.contains("ld-musl"), "{msg}");
        let (field, msg) = rejected(&[
            T::File("cpub.toml", BINARY_TOML),
            T::File("bin/hello", b"#!/bin/sh\n"),
        ]);
        assert_eq!(field, "entrypoint");
        assert!(msg.contains("not an ELF"), "{msg}");
        let (field, msg) = rejected(&[T::File("cpub.toml", BINARY_TOML)]);
        assert_eq!(field, "entrypoint");
        assert!(msg.contains("not in the bundle"), "{msg}");
    }

    #[test]
    fn absolute_path_is_refused() {
        let (field, msg) = rejected(&[
            T::File("cpub.toml", CONTAINER_TOML),
            T::File("/etc/passwd", b"x"),
        ]);
        assert_eq!(field, "/etc/passwd");
        assert!(msg.contains("absolute"), "{msg}");
    }

    #[test]
    fn dotdot_is_refused() {
        let (field, msg) = rejected(&[
            T::File("cpub.toml", CONTAINER_TOML),
            T::File("a/../../x", b"x"),
        ]);
        assert_eq!(field, "a/../../x");
        assert!(msg.contains(".."), "{msg}");
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        let (field, msg) = rejected(&[T::Symlink("src/link", "../../etc/shadow")]);
        assert_eq!(field, "src/link");
        assert!(msg.contains("leaves the bundle"), "{msg}");
        let (field, msg) = rejected(&[T::Symlink("link", "/etc/shadow")]);
        assert_eq!(field, "link");
        assert!(msg.contains("absolute"), "{msg}");
        // `d -> .` looks harmless, but `d/x -> ../y` then points outside.
        let (field, msg) = rejected(&[
            T::File("cpub.toml", CONTAINER_TOML),
            T::Symlink("d", "."),
            T::Symlink("d/x", "../y"),
        ]);
        assert_eq!(field, "d/x");
        assert!(msg.contains("through the symlink"), "{msg}");
        // Nor a target that goes back after a name: with `d -> .` the kernel
        // reads `d/../etc/shadow` as the bundle's parent's (review helper-63;
        // lexically it was `etc/shadow`, inside).
        for target in ["d/../etc/shadow", "d/d/../../etc/shadow", "./x/.."] {
            let (field, msg) = rejected(&[
                T::File("cpub.toml", CONTAINER_TOML),
                T::Symlink("d", "."),
                T::Symlink("l", target),
            ]);
            assert_eq!(field, "l", "{target}");
            assert!(msg.contains("`..` after a name"), "{target}: {msg}");
        }
        let (field, _) = rejected(&[T::Hardlink("h", "../outside")]);
        assert_eq!(field, "h");
        let (field, msg) = rejected(&[T::Hardlink("h", "not-there")]);
        assert_eq!(field, "h");
        assert!(msg.contains("earlier regular file"), "{msg}");
    }

    #[test]
    fn device_and_fifo_entries_are_refused() {
        let (field, msg) = rejected(&[T::Special("dev/null", EntryType::Char)]);
        assert_eq!(field, "dev/null");
        assert!(msg.contains("character device"), "{msg}");
        let (field, msg) = rejected(&[T::Special("sda", EntryType::Block)]);
        assert_eq!(
            (field.as_str(), msg.contains("block device")),
            ("sda", true)
        );
        let (field, msg) = rejected(&[T::Special("pipe", EntryType::Fifo)]);
        assert_eq!((field.as_str(), msg.contains("fifo")), ("pipe", true));
    }

    #[test]
    fn too_many_files_are_refused() {
        let names: Vec<String> = (0..21).map(|i| format!("f{i}")).collect();
        let entries: Vec<T<'_>> = names.iter().map(|n| T::File(n, b"x")).collect();
        let (field, msg) = rejected(&entries);
        assert_eq!(field, "bundle");
        assert!(msg.contains("more than 20 entries"), "{msg}");
    }

    #[test]
    fn size_bombs_are_refused() {
        // Declared file sizes over the limit: refused at the header.
        let zeros = vec![0u8; (1 << 20) + 1];
        let (field, msg) =
            rejected(&[T::File("cpub.toml", CONTAINER_TOML), T::File("big", &zeros)]);
        assert_eq!(field, "bundle");
        assert!(msg.contains("larger than 1048576 bytes"), "{msg}");
        // Bytes that are no file (a 3 MiB GNU long name, which tar would
        // read into memory): refused at its header, before tar reads it.
        let (field, msg) = rejected(&[T::LongName(3 << 20)]);
        assert_eq!(field, "bundle");
        assert!(
            msg.contains("GNU long-name header") && msg.contains("limit is 4096"),
            "{msg}"
        );
    }

    /// Raw `.tar` bytes (uncompressed) of `blocks` of header + data.
    fn raw_tar(entries: &[(Header, Vec<u8>)]) -> Vec<u8> {
        let mut tar = Vec::new();
        for (header, data) in entries {
            tar.extend_from_slice(header.as_bytes());
            tar.extend_from_slice(data);
            tar.resize(tar.len().next_multiple_of(512), 0);
        }
        tar.extend_from_slice(&[0; 1024]);
        tar
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    fn ustar(path: &str, entry_type: EntryType, size: u64) -> Header {
        let mut h = Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_entry_type(entry_type);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        h
    }

    fn rejected_gz(gz: Vec<u8>) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        match prepare_from(Cursor::new(gz), dir.path(), "hello", &LIMITS) {
            Err(Error::BadRequest { field, message }) => (field.unwrap(), message),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_tar_reads_them() {
        // A PAX header announcing 600 MB (only its first bytes are sent:
        // the refusal comes at the header).
        let big = 600_000_000;
        let tar = raw_tar(&[(
            ustar("PaxHeaders/x", EntryType::XHeader, big),
            vec![b'a'; 4096],
        )]);
        let (field, msg) = rejected_gz(gzip(&tar));
        assert_eq!(field, "bundle");
        assert!(
            msg.contains("PAX extended header \"PaxHeaders/x\" is 600000000 bytes")
                && msg.contains("limit is 65536"),
            "{msg}"
        );
        for (entry_type, what) in [
            (EntryType::GNULongName, "long-name"),
            (EntryType::GNULongLink, "long-link"),
        ] {
            let mut h = Header::new_gnu();
            h.set_entry_type(entry_type);
            h.set_size(big);
            h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
            h.set_cksum();
            let (field, msg) = rejected_gz(gzip(&raw_tar(&[(h, vec![b'a'; 4096])])));
            assert_eq!(field, "bundle");
            assert!(
                msg.contains(&format!("GNU {what} header")) && msg.contains("600000000 bytes"),
                "{msg}"
            );
        }
        // A path longer than PATH_MAX through a (small enough) PAX header.
        let long = "d/".repeat(2100) + "f";
        let record = format!("path={long}\n");
        let mut len = record.len() + 5;
        len = record.len() + len.to_string().len() + 1;
        let pax = format!("{len} {record}");
        assert_eq!(pax.len(), len);
        let tar = raw_tar(&[
            (
                ustar("PaxHeaders/f", EntryType::XHeader, pax.len() as u64),
                pax.into_bytes(),
            ),
            (ustar("f", EntryType::Regular, 0), Vec::new()),
        ]);
        let (_, msg) = rejected_gz(gzip(&tar));
        assert!(msg.contains("entry path is 4201 bytes long"), "{msg}");
    }

    #[test]
    fn legitimate_extensions_still_work() {
        // A PAX `size` record overrides the header's size (as in tar): the
        // guard must follow it to find the next header.
        // Its data looks like a hostile header: a guard that lost track
        // of the framing would refuse it.
        let mut decoy = Header::new_gnu();
        decoy.set_entry_type(EntryType::GNULongName);
        decoy.set_size(600_000_000);
        decoy.set_cksum();
        let mut data = decoy.as_bytes().to_vec();
        data.extend_from_slice(&b"0123456789ABCDEF".repeat(100));
        let record = format!("size={}\n", data.len());
        let pax = format!("{} {record}", record.len() + 3);
        assert_eq!(pax.len(), record.len() + 3);
        let mut file = ustar("data.bin", EntryType::Regular, 0);
        file.set_size(0);
        file.set_cksum();
        let long = format!("{}/file.txt", "sub".repeat(60));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"hi"[..]).unwrap(); // a GNU long name
        let gnu_long = b.into_inner().unwrap();
        let mut tar = raw_tar(&[
            (
                ustar("cpub.toml", EntryType::Regular, CONTAINER_TOML.len() as u64),
                CONTAINER_TOML.to_vec(),
            ),
            (
                ustar("Containerfile", EntryType::Regular, 13),
                b"FROM scratch\n".to_vec(),
            ),
            (
                ustar("PaxHeaders/data.bin", EntryType::XHeader, pax.len() as u64),
                pax.into_bytes(),
            ),
            (file, data.clone()),
        ]);
        tar.truncate(tar.len() - 1024);
        tar.extend_from_slice(&gnu_long);
        let dir = tempfile::tempdir().unwrap();
        let bundle = prepare_from(Cursor::new(gzip(&tar)), dir.path(), "hello", &LIMITS).unwrap();
        let mut a = tar::Archive::new(File::open(&bundle.context_tar).unwrap());
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            seen.push((e.path().unwrap().display().to_string(), body));
        }
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["cpub.toml", "Containerfile", "data.bin", long.as_str()]
        );
        assert_eq!(seen[2].1, data);
        assert_eq!(seen[3].1, b"hi");
    }

    #[test]
    fn only_whole_gzip_streams_are_accepted() {
        let good = tar_gz(&[
            T::File("cpub.toml", CONTAINER_TOML),
            T::File("Containerfile", b"FROM scratch\n"),
        ]);
        let dir = tempfile::tempdir().unwrap();
        prepare_from(Cursor::new(good.clone()), dir.path(), "hello", &LIMITS).unwrap();
        // Without its 8-byte trailer (CRC32 + size): the tar inside is whole.
        let (field, msg) = rejected_gz(good[..good.len() - 8].to_vec());
        assert_eq!(field, "bundle");
        assert!(
            msg.contains("truncated") && msg.contains("trailer"),
            "{msg}"
        );
        // Only part of the trailer.
        let (_, msg) = rejected_gz(good[..good.len() - 3].to_vec());
        assert!(msg.contains("truncated"), "{msg}");
        // A wrong CRC32, then a wrong size.
        for at in [good.len() - 8, good.len() - 1] {
            let mut bad_crc = good.clone();
            bad_crc[at] ^= 0x55;
            let (field, msg) = rejected_gz(bad_crc);
            assert_eq!(field, "bundle");
            assert!(msg.contains("CRC32 or size does not match"), "{msg}");
        }
        // Bytes after the gzip stream that are no gzip member.
        let mut junk = good.clone();
        junk.extend_from_slice(b"trailing junk");
        let (field, _) = rejected_gz(junk);
        assert_eq!(field, "bundle");
    }

    #[test]
    fn manifest_problems_name_the_field() {
        let (field, msg) = rejected(&[T::File("Containerfile", b"FROM scratch\n")]);
        assert_eq!(field, "cpub.toml");
        assert!(msg.contains("no cpub.toml"), "{msg}");
        let (field, _) = rejected(&[T::File(
            "cpub.toml",
            b"name = \"hello\"\nruntime = \"container\"\n[resources]\nmemory_mb = 1\n",
        )]);
        assert_eq!(field, "resources.memory_mb");
        let (field, _) = rejected(&[T::File(
            "cpub.toml",
            b"name = \"other\"\nruntime = \"container\"\n",
        )]);
        assert_eq!(field, "name");
        let (field, msg) = rejected(&[T::File("cpub.toml", CONTAINER_TOML)]);
        assert_eq!(field, "Containerfile");
        assert!(msg.contains("needs a Containerfile"), "{msg}");
        let (field, _) = rejected(&[T::File("cpub.toml", b"name = \"hello\"\nruntime = [\n")]);
        assert_eq!(field, "cpub.toml");
    }

    #[test]
    fn duplicates_are_refused() {
        let (field, msg) = rejected(&[T::File("a", b"1"), T::File("./a", b"2")]);
        assert_eq!(field, "./a");
        assert!(msg.contains("twice"), "{msg}");
    }

    #[test]
    fn not_gzip_or_not_tar_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = prepare_from(
            Cursor::new(b"PK\x03\x04 a zip".to_vec()),
            dir.path(),
            "hello",
            &LIMITS,
        )
        .unwrap_err();
        let Error::BadRequest { field, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(field.as_deref(), Some("bundle"));
        assert!(message.contains("not gzip"), "{message}");

        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&[b'z'; 2000]).unwrap();
        let err = prepare_from(
            Cursor::new(gz.finish().unwrap()),
            dir.path(),
            "hello",
            &LIMITS,
        )
        .unwrap_err();
        let Error::BadRequest { field, message } = err else {
            panic!("{err:?}")
        };
        assert_eq!(field.as_deref(), Some("bundle"));
        assert!(message.contains("not a valid .tar.gz"), "{message}");

        // Truncated gzip.
        let good = tar_gz(&[
            T::File("cpub.toml", CONTAINER_TOML),
            T::File("big", &[7u8; 100_000]),
        ]);
        let err = prepare_from(
            Cursor::new(good[..good.len() / 2].to_vec()),
            dir.path(),
            "hello",
            &LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::BadRequest { field: Some(ref f), .. } if f == "bundle"),
            "{err:?}"
        );
    }
}
