//! Where each followed container's log file has been shipped up to: the
//! byte offset and the file's inode after the last line the control plane
//! acknowledged, kept in memory per container and saved in
//! `<state-dir>/log-offsets/<container id>`, so that the next proxy resumes
//! an adopted instance's file there instead of at its end (lines printed
//! while no proxy ran, or queued in memory when it stopped, are read
//! again).
//!
//! **Names.** The inode alone does not tell files apart: conmon's rotation
//! frees inode numbers that a later file gets, so after rotations while no
//! proxy ran an inode-only offset could start the next proxy mid-file in
//! another file. Each acknowledged line carries the name of the file it
//! was read from (`super::file_identity`: inode and first record's time),
//! and the offset is saved with it in a second file,
//! `<state-dir>/log-offsets/names/<container id>` (`{container, ino,
//! offset, file}`), written first. The first file keeps exactly the shape
//! older proxies read (`{container, ino, offset}`, unknown fields
//! refused): a proxy rolled back to one of them still resumes where this
//! one stopped, by inode. Reading: no names file (an older proxy), or one
//! that agrees with the offset and holds no name (a file with no whole
//! record yet), means the offset is matched by inode; a names file that
//! holds a name gives the place and its file (even when the offset file
//! says another: it is written first, and any place it names was
//! acknowledged in that file); one that cannot be read or is another
//! container's, one that disagrees and holds no name, or a name inside the
//! offset file (0cdb4be's form) means the file is not known, and it is
//! read from its start ([`SavedName`]).
//!
//! **Write rate.** A container's files are written when its tailer starts
//! (its files alone, so a proxy that dies at once still finds them; a
//! burst of cold starts does not rewrite every other moved offset), then at
//! most once per [`SAVE_EVERY`] when acknowledgements moved it, and once
//! more at a graceful shutdown (`LogHub::flush`). Each write is the
//! project's atomic replacement (`containerpub_util::fs::write_atomic`): a
//! file is never seen half-written (a kill between the two files leaves
//! the names file ahead, which reading follows). A proxy killed without a
//! shutdown may therefore resume up to a second of acknowledged lines
//! early: they are shipped again (duplicates, never losses).
//!
//! **Hostile files.** A file is read only if it is a regular file (opened
//! with `O_NOFOLLOW | O_NONBLOCK`: a symbolic link is not followed, a FIFO
//! does not block the thread), at most [`MAX_FILE_BYTES`], JSON of exactly
//! its shape and names its own container; anything else is ignored with a
//! warning: an unusable offset file as if there were none (the tailer
//! starts at the end), an unusable names file as a file not known (read
//! from its start).
//! Container ids are only used as file names when they are 1 to 64
//! lowercase hex digits.
//!
//! Over 600 lines (about 480 lines of code and docs, 400 of tests): the
//! tests of hostile files, names and write rates belong beside the one
//! type they hold to.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerpub_util::fs::{Modes, write_atomic};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Subdirectory of the proxy's state directory.
pub const DIR_NAME: &str = "log-offsets";
/// Subdirectory of [`DIR_NAME`] holding the offsets with their files'
/// names (not a container id: older proxies' pruning leaves it alone).
pub const NAMES_DIR: &str = "names";
/// A container's file is written at most this often (besides its first
/// write and the shutdown's).
pub const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Largest offset file read.
const MAX_FILE_BYTES: u64 = 4096;

/// A place in a log file: read up to `offset` bytes of the file with inode
/// `ino`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub ino: u64,
    pub offset: u64,
}

/// What a previous proxy saved for a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub at: Position,
    /// Which file `at` is in.
    pub file: SavedName,
}

/// The name saved with an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedName {
    /// No name: no names file (saved by an older proxy), or one that
    /// agrees with the offset and says none (the file had no whole record
    /// yet). The offset is matched by its inode.
    Absent,
    /// The name of the file (`super::file_identity`).
    Known(String),
    /// A names file that cannot be read, or disagrees with the offset file
    /// and holds no name, or a name inside the offset file (as 0cdb4be
    /// wrote it, which could pair an old file's offset with a later file's
    /// name): which file the offset is in is not known, so the file is
    /// read from its start (lines read again, which the control plane
    /// drops; a long file may meet the rate limit, counted).
    Unsure,
}

/// The offset file's content: the shape every proxy since offsets reads
/// (writing `file` in it would make older proxies refuse it). A `file`
/// found in it (written by 0cdb4be, which had no names file) is accepted
/// as [`SavedName::Unsure`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    container: String,
    ino: u64,
    offset: u64,
    #[serde(default, skip_serializing)]
    file: Option<String>,
}

/// The names file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedOnDisk {
    container: String,
    ino: u64,
    offset: u64,
    /// `null`: saved before the file had a whole record.
    file: Option<String>,
}

/// An offset and the name of its file, when known.
type Place = (Position, Option<Arc<str>>);

/// The file of a container's log a line was read from: its inode and how
/// many rotations the tailer had gone through (an inode alone can name two
/// files: a rotation frees a number a later file may get).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRead {
    pub ino: u64,
    pub rotation: u32,
}

struct Entry {
    /// After the last acknowledged line, in the file of that name.
    acked: Place,
    /// The file the tailer reads now (conmon's current file): a next
    /// proxy reads only that one again.
    current: FileRead,
    /// What the files hold.
    saved: Option<Place>,
    last_write: Option<Instant>,
}

/// The offsets of the containers this node follows.
pub struct Offsets {
    dir: PathBuf,
    entries: Mutex<FxHashMap<Arc<str>, Entry>>,
    /// Held while files are written or removed: two writers never put an
    /// older offset over a newer one, and a write never brings back the
    /// file of a container that is gone.
    io: Mutex<()>,
}

impl std::fmt::Debug for Offsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offsets")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Whether `id` may name a file: a container id, 1 to 64 lowercase hex
/// digits.
fn is_container_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Offsets {
    /// Offsets kept in `dir` (created on the first write).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            entries: Mutex::default(),
            io: Mutex::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> Option<PathBuf> {
        is_container_id(id).then(|| self.dir.join(id))
    }

    fn names_path(&self, id: &str) -> Option<PathBuf> {
        is_container_id(id).then(|| self.dir.join(NAMES_DIR).join(id))
    }

    /// What the previous proxy saved for container `id`: `None` when there
    /// is no offset file, or it is not one this code wrote (with a
    /// warning); the name as the names file gives it ([`SavedName`]). A
    /// names file with a name gives its own place even when the offset
    /// file says another (a kill or a failed write between the two, or an
    /// older proxy moved the offset since): a place acknowledged in the
    /// file it names, resumed only in that file, so at worst lines are
    /// read again.
    pub fn load(&self, id: &str) -> Option<Saved> {
        let saved: OnDisk = read_json(&self.path(id)?).ok()??;
        if saved.container != id {
            tracing::warn!(dir = %self.dir.display(), names = %saved.container.escape_debug(), "log offset file of another container; ignored");
            return None;
        }
        let at = Position {
            ino: saved.ino,
            offset: saved.offset,
        };
        let (at, file) = match (
            saved.file,
            self.names_path(id).map(|p| read_json::<NamedOnDisk>(&p)),
        ) {
            (None, Some(Ok(None))) => (at, SavedName::Absent),
            (None, Some(Ok(Some(n)))) if n.container == id => {
                let named = Position {
                    ino: n.ino,
                    offset: n.offset,
                };
                match n.file {
                    Some(name) => (named, SavedName::Known(name)),
                    None if named == at => (at, SavedName::Absent),
                    None => (at, SavedName::Unsure),
                }
            }
            (None, Some(Ok(Some(n)))) => {
                tracing::warn!(dir = %self.dir.display(), names = %n.container.escape_debug(), "log offset names file of another container; its file is not known");
                (at, SavedName::Unsure)
            }
            // A name inside the offset file (written by 0cdb4be, which
            // could pair an old file's offset with a later file's name), or
            // a names file that cannot be read.
            _ => (at, SavedName::Unsure),
        };
        Some(Saved { at, file })
    }

    /// Starts keeping container `id`'s offset at `at` (in the file named
    /// `file`, when known) and writes its files now — its files only: the
    /// others wait for their turn (blocking: call off the async threads).
    pub fn register(&self, id: &Arc<str>, at: Position, file: Option<Arc<str>>) {
        if !is_container_id(id) {
            return;
        }
        self.entries.lock().expect("offsets lock").insert(
            Arc::clone(id),
            Entry {
                acked: (at, file),
                current: FileRead {
                    ino: at.ino,
                    rotation: 0,
                },
                saved: None,
                last_write: None,
            },
        );
        self.write(|entry_id, _| entry_id == &**id);
    }

    /// Lines up to `at` of container `id`, read from the file named
    /// `file`, were acknowledged (nothing when it is not kept, e.g. gone).
    pub fn acknowledge(&self, id: &str, at: Position, file: Option<&Arc<str>>) {
        let mut entries = self.entries.lock().expect("offsets lock");
        if let Some(entry) = entries.get_mut(id) {
            let (acked, acked_file) = &entry.acked;
            // The same file (inode and name) only moves forward; another
            // is one conmon rotated in, read after the one before (its
            // inode may be the same: a number the rotation freed).
            let same_file = acked.ino == at.ino && acked_file.as_ref() == file;
            if !same_file || acked.offset < at.offset {
                entry.acked = (at, file.cloned());
            }
        }
    }

    /// The tailer of container `id` went on to the file with inode `ino`
    /// (conmon rotated the log): the old file's lines are no longer read
    /// again by a next proxy, which starts with the current file. Returns
    /// the rotations seen since [`Offsets::register`] (what the tailer's
    /// lines of that file carry; 0 when the container is not kept).
    pub fn rotated(&self, id: &str, ino: u64) -> u32 {
        let mut entries = self.entries.lock().expect("offsets lock");
        let Some(entry) = entries.get_mut(id) else {
            return 0;
        };
        entry.current = FileRead {
            ino,
            rotation: entry.current.rotation.wrapping_add(1),
        };
        entry.current.rotation
    }

    /// Whether container `id`'s offset is kept (its lines can be read
    /// again by the next proxy).
    pub fn is_kept(&self, id: &str) -> bool {
        self.entries.lock().expect("offsets lock").contains_key(id)
    }

    /// Whether a line read from `file` of container `id`'s log is read
    /// again by the next proxy if it is not shipped: its offset is kept and
    /// `file` is still the container's current file (a rotated-away file is
    /// gone for the next proxy, even when the current one has its inode).
    pub fn readable_again(&self, id: &str, file: FileRead) -> bool {
        self.entries
            .lock()
            .expect("offsets lock")
            .get(id)
            .is_some_and(|e| e.current == file)
    }

    /// Writes the files whose acknowledged offset moved: those not written
    /// for [`SAVE_EVERY`], or all of them with `all`. Blocking. Returns how
    /// many containers' files were written.
    pub fn save(&self, all: bool) -> usize {
        let now = Instant::now();
        self.write(|_, e| {
            all || e
                .last_write
                .is_none_or(|t| now.duration_since(t) >= SAVE_EVERY)
        })
    }

    /// Writes the files of the entries `due` picks whose acknowledged
    /// place is not the one saved: the names file first (its `file` null
    /// when the name is not known), then, if that went well, the offset
    /// file (a failed names write leaves the pair as it was; a kill or a
    /// failed offset write between the two leaves the names file ahead,
    /// which [`Offsets::load`] follows). Blocking. Returns how many
    /// containers' files were written.
    fn write(&self, due: impl Fn(&str, &Entry) -> bool) -> usize {
        let _io = self.io.lock().expect("offsets io lock");
        let now = Instant::now();
        let due: Vec<(Arc<str>, Place)> = self
            .entries
            .lock()
            .expect("offsets lock")
            .iter()
            .filter(|(id, e)| e.saved.as_ref() != Some(&e.acked) && due(id, e))
            .map(|(id, e)| (Arc::clone(id), e.acked.clone()))
            .collect();
        let mut written = 0;
        for (id, (at, file)) in due {
            let (Some(path), Some(names)) = (self.path(&id), self.names_path(&id)) else {
                continue;
            };
            let body = serde_json::to_vec(&NamedOnDisk {
                container: id.to_string(),
                ino: at.ino,
                offset: at.offset,
                file: file.as_deref().map(str::to_owned),
            })
            .unwrap_or_default();
            let result = write_atomic(&names, &body, Modes::PRIVATE).and_then(|()| {
                let body = serde_json::to_vec(&OnDisk {
                    container: id.to_string(),
                    ino: at.ino,
                    offset: at.offset,
                    file: None,
                })
                .unwrap_or_default();
                write_atomic(&path, &body, Modes::PRIVATE)
            });
            let mut entries = self.entries.lock().expect("offsets lock");
            let Some(entry) = entries.get_mut(&id) else {
                continue;
            };
            entry.last_write = Some(now);
            match result {
                Ok(()) => {
                    entry.saved = Some((at, file));
                    written += 1;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save a log offset (the next proxy may ship lines twice)");
                }
            }
        }
        written
    }

    /// Container `id` is gone: its offset and files too. Blocking.
    pub fn forget(&self, id: &str) {
        let _io = self.io.lock().expect("offsets io lock");
        self.entries.lock().expect("offsets lock").remove(id);
        for path in [self.path(id), self.names_path(id)].into_iter().flatten() {
            if let Err(e) = remove(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a log offset file");
            }
        }
    }

    /// Removes the files of containers `keep` refuses (gone while no proxy
    /// ran) and temporary files a crash left, in both directories.
    /// Blocking; returns how many went.
    pub fn prune(&self, keep: impl Fn(&str) -> bool) -> usize {
        let _io = self.io.lock().expect("offsets io lock");
        let mut removed = 0;
        for dir in [self.dir.clone(), self.dir.join(NAMES_DIR)] {
            let Ok(dir) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let stale = if is_container_id(name) {
                    !keep(name)
                } else {
                    // `write_atomic`'s temporary files: `.<id>.<random>.tmp`.
                    name.starts_with('.') && name.ends_with(".tmp")
                };
                if stale && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

/// Removes `path`; already gone is fine.
fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A file that is there but cannot be used (said in a warning).
struct Unusable;

/// Reads `path` as JSON of `T`'s shape: `Ok(None)` when there is no file;
/// [`Unusable`] when it is not a regular file, is too large or is not that
/// JSON.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Unusable> {
    let file = match open_regular(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read a log offset file; ignored");
            return Err(Unusable);
        }
    };
    let mut text = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut text) {
        tracing::warn!(path = %path.display(), error = %e, "cannot read a log offset file; ignored");
        return Err(Unusable);
    }
    if text.len() as u64 > MAX_FILE_BYTES {
        tracing::warn!(path = %path.display(), max_bytes = MAX_FILE_BYTES, "log offset file too large; ignored");
        return Err(Unusable);
    }
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "corrupt log offset file; ignored");
        Unusable
    })
}

/// Opens `path` for reading only if it is a regular file: a symbolic link
/// is not followed (`O_NOFOLLOW`: the open fails) and a FIFO or device does
/// not block the open (`O_NONBLOCK`) and is then refused.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn offsets() -> (tempfile::TempDir, Offsets) {
        let root = tempfile::tempdir().unwrap();
        let offsets = Offsets::new(root.path().join(DIR_NAME));
        (root, offsets)
    }

    #[test]
    fn an_offset_round_trips_and_is_saved_at_most_once_a_second() {
        let (_root, offsets) = offsets();
        let id: Arc<str> = Arc::from(ID);
        assert_eq!(offsets.load(ID).map(|s| s.at), None, "no file yet");
        offsets.register(&id, Position { ino: 7, offset: 0 }, None);
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position { ino: 7, offset: 0 })
        );
        offsets.acknowledge(
            ID,
            Position {
                ino: 7,
                offset: 100,
            },
            None,
        );
        assert_eq!(offsets.save(false), 0, "written less than a second ago");
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position { ino: 7, offset: 0 })
        );
        // An older acknowledgement of the same file never moves it back.
        offsets.acknowledge(ID, Position { ino: 7, offset: 50 }, None);
        assert_eq!(offsets.save(true), 1);
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position {
                ino: 7,
                offset: 100
            })
        );
        assert_eq!(offsets.save(true), 0, "nothing moved");
        // A rotated file (new inode) starts lower.
        offsets.acknowledge(ID, Position { ino: 8, offset: 10 }, None);
        std::thread::sleep(SAVE_EVERY);
        assert_eq!(offsets.save(false), 1);
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position { ino: 8, offset: 10 })
        );
        // Gone: the file too, and a late acknowledgement brings nothing back.
        offsets.forget(ID);
        offsets.acknowledge(ID, Position { ino: 8, offset: 20 }, None);
        assert_eq!(offsets.save(true), 0);
        assert_eq!(offsets.load(ID).map(|s| s.at), None);
        assert!(!offsets.is_kept(ID));
    }

    #[test]
    fn an_offset_is_saved_with_the_name_of_its_file() {
        let (_root, offsets) = offsets();
        let id: Arc<str> = Arc::from(ID);
        let saved = |ino, offset, file: Option<&str>| {
            Some(Saved {
                at: Position { ino, offset },
                file: file.map_or(SavedName::Absent, |f| SavedName::Known(f.to_owned())),
            })
        };
        let name = |n: &str| Some(Arc::<str>::from(n));
        // Registered before the file had a whole record: no name.
        offsets.register(&id, Position { ino: 7, offset: 0 }, None);
        assert_eq!(offsets.load(ID), saved(7, 0, None));
        // Its lines name it.
        offsets.acknowledge(ID, Position { ino: 7, offset: 90 }, name("7-1").as_ref());
        assert_eq!(offsets.save(true), 1);
        assert_eq!(offsets.load(ID), saved(7, 90, Some("7-1")));
        // Rotated: lines of the old file acknowledged after the rotation
        // keep the old file's name.
        offsets.rotated(ID, 8);
        offsets.acknowledge(
            ID,
            Position {
                ino: 7,
                offset: 100,
            },
            name("7-1").as_ref(),
        );
        assert_eq!(offsets.save(true), 1);
        assert_eq!(offsets.load(ID), saved(7, 100, Some("7-1")));
        // The same inode under another name is another file (the number
        // the rotation freed, given to a later file): its offset is taken
        // even when lower, with its name.
        offsets.rotated(ID, 7);
        offsets.acknowledge(ID, Position { ino: 7, offset: 30 }, name("7-3").as_ref());
        assert_eq!(offsets.save(true), 1);
        assert_eq!(offsets.load(ID), saved(7, 30, Some("7-3")));
        // ... and within it only moves forward.
        offsets.acknowledge(ID, Position { ino: 7, offset: 20 }, name("7-3").as_ref());
        assert_eq!(offsets.save(true), 0);
        // The offset file keeps the shape older proxies read: a rolled-back
        // proxy resumes by inode.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Older {
            container: String,
            ino: u64,
            offset: u64,
        }
        let older: Older =
            serde_json::from_slice(&std::fs::read(offsets.dir().join(ID)).unwrap()).unwrap();
        assert_eq!((&*older.container, older.ino, older.offset), (ID, 7, 30));
        // A names file that does not agree with the offset file (an older
        // proxy moved the offset, or a kill came between the two writes):
        // its own place, in the file it names.
        std::fs::write(
            offsets.dir().join(ID),
            format!("{{\"container\":\"{ID}\",\"ino\":7,\"offset\":31}}"),
        )
        .unwrap();
        assert_eq!(offsets.load(ID), saved(7, 30, Some("7-3")));
        // ... and without a name: which file is not known.
        std::fs::write(
            offsets.dir().join(NAMES_DIR).join(ID),
            format!("{{\"container\":\"{ID}\",\"ino\":7,\"offset\":30,\"file\":null}}"),
        )
        .unwrap();
        assert_eq!(
            offsets.load(ID),
            Some(Saved {
                at: Position { ino: 7, offset: 31 },
                file: SavedName::Unsure
            })
        );
        // An offset file with its name inside (as 0cdb4be wrote it, which
        // could pair an old file's offset with a later file's name): not
        // trusted.
        std::fs::write(
            offsets.dir().join(ID),
            format!("{{\"container\":\"{ID}\",\"ino\":7,\"offset\":31,\"file\":\"7-9\"}}"),
        )
        .unwrap();
        assert_eq!(offsets.load(ID).unwrap().file, SavedName::Unsure);
        // Registered with a name; then without one: the names file says
        // none (it is not removed: a kill after a removal would leave a
        // named file's offset matched by inode alone).
        offsets.register(&id, Position { ino: 9, offset: 4 }, name("9-2"));
        assert_eq!(offsets.load(ID), saved(9, 4, Some("9-2")));
        offsets.register(&id, Position { ino: 9, offset: 0 }, None);
        assert_eq!(offsets.load(ID), saved(9, 0, None));
        assert!(offsets.dir().join(NAMES_DIR).join(ID).is_file());
        // The names file is written first, the offset only after it: when
        // the names file cannot be written, the offset file keeps the place
        // before (the pair agrees).
        let names = offsets.dir().join(NAMES_DIR).join(ID);
        std::fs::remove_file(&names).unwrap();
        std::fs::create_dir(&names).unwrap();
        offsets.acknowledge(ID, Position { ino: 9, offset: 50 }, name("9-4").as_ref());
        assert_eq!(offsets.save(true), 0, "not written");
        let Some(Saved { at, .. }) = offsets.load(ID) else {
            panic!("the offset file is gone");
        };
        assert_eq!(at, Position { ino: 9, offset: 0 });
        std::fs::remove_dir(&names).unwrap();
        assert_eq!(offsets.save(true), 1);
        assert_eq!(offsets.load(ID), saved(9, 50, Some("9-4")));
    }

    #[test]
    fn hostile_offset_files_are_ignored_without_a_panic() {
        let (_root, offsets) = offsets();
        std::fs::create_dir_all(offsets.dir()).unwrap();
        let path = offsets.dir().join(ID);
        let other = ID.replace('0', "f");
        for (content, why) in [
            (b"".to_vec(), "empty"),
            (b"{\"ino\":1,".to_vec(), "cut"),
            (vec![0xff, 0xfe, 0x00], "binary"),
            // Its own container: only the numbers are at fault.
            (
                format!("{{\"container\":\"{ID}\",\"ino\":-1,\"offset\":0}}").into_bytes(),
                "negative",
            ),
            (
                format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":99999999999999999999999}}")
                    .into_bytes(),
                "huge",
            ),
            (
                format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":1.5}}").into_bytes(),
                "fractional",
            ),
            (
                format!("{{\"container\":\"{other}\",\"ino\":1,\"offset\":2}}").into_bytes(),
                "another container's",
            ),
            (
                format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":2,\"x\":1}}").into_bytes(),
                "unknown field",
            ),
            (
                format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":2,\"file\":[]}}")
                    .into_bytes(),
                "a name that is no string",
            ),
            (vec![b' '; 10_000], "too large"),
        ] {
            std::fs::write(&path, &content).unwrap();
            assert_eq!(offsets.load(ID).map(|s| s.at), None, "{why}");
        }
        // A hostile names file: the offset is read, its file not known.
        std::fs::write(
            &path,
            format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":2}}"),
        )
        .unwrap();
        let names = offsets.dir().join(NAMES_DIR);
        std::fs::create_dir_all(&names).unwrap();
        for (content, why) in [
            (b"{\"file\":".to_vec(), "cut"),
            (vec![0xff, 0x00], "binary"),
            (
                format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":2,\"file\":3}}")
                    .into_bytes(),
                "a name that is no string",
            ),
            (
                format!("{{\"container\":\"{other}\",\"ino\":1,\"offset\":2,\"file\":\"1-2\"}}")
                    .into_bytes(),
                "another container's",
            ),
            (vec![b' '; 10_000], "too large"),
        ] {
            std::fs::write(names.join(ID), &content).unwrap();
            let got = offsets.load(ID).unwrap();
            assert_eq!(
                (got.at, got.file),
                (Position { ino: 1, offset: 2 }, SavedName::Unsure),
                "{why}"
            );
        }
        // A link to a good names file, or a directory, in its place.
        let good = format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":2,\"file\":\"1-2\"}}");
        let elsewhere = offsets.dir().join("elsewhere");
        std::fs::write(&elsewhere, &good).unwrap();
        std::fs::remove_file(names.join(ID)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, names.join(ID)).unwrap();
        assert_eq!(offsets.load(ID).unwrap().file, SavedName::Unsure, "a link");
        std::fs::remove_file(names.join(ID)).unwrap();
        std::fs::create_dir(names.join(ID)).unwrap();
        assert_eq!(
            offsets.load(ID).unwrap().file,
            SavedName::Unsure,
            "a directory"
        );
        std::fs::remove_dir(names.join(ID)).unwrap();
        std::fs::remove_file(&elsewhere).unwrap();
        // No names file: saved by an older proxy, matched by inode.
        assert_eq!(offsets.load(ID).unwrap().file, SavedName::Absent);
        std::fs::write(
            names.join(ID),
            format!("{{\"container\":\"{ID}\",\"ino\":1,\"offset\":2,\"file\":\"1-2\"}}"),
        )
        .unwrap();
        assert_eq!(
            offsets.load(ID).unwrap().file,
            SavedName::Known("1-2".into()),
            "the good form"
        );
        std::fs::remove_file(names.join(ID)).unwrap();
        // A directory in its place, a name that is no container id.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(offsets.load(ID).map(|s| s.at), None);
        assert_eq!(offsets.load("../etc/passwd"), None);
        offsets.register(&Arc::from("../../x"), Position { ino: 1, offset: 1 }, None);
        assert!(!offsets.is_kept("../../x"));
        // The good form is read.
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(
            &path,
            format!("{{\"container\":\"{ID}\",\"ino\":3,\"offset\":4}}"),
        )
        .unwrap();
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position { ino: 3, offset: 4 })
        );
        // The same numbers as above, each alone: the shape is right, so
        // the refusals above were the numbers'.
        for (ino, offset) in [("1", "0"), ("1", "18446744073709551615")] {
            std::fs::write(
                &path,
                format!("{{\"container\":\"{ID}\",\"ino\":{ino},\"offset\":{offset}}}"),
            )
            .unwrap();
            assert!(offsets.load(ID).map(|s| s.at).is_some(), "{ino} {offset}");
        }
    }

    #[test]
    fn a_link_or_a_fifo_in_place_of_an_offset_file_is_refused_at_once() {
        let (root, offsets) = offsets();
        std::fs::create_dir_all(offsets.dir()).unwrap();
        let path = offsets.dir().join(ID);
        // A symbolic link to a good file elsewhere: not followed.
        let elsewhere = root.path().join("elsewhere");
        std::fs::write(
            &elsewhere,
            format!("{{\"container\":\"{ID}\",\"ino\":3,\"offset\":4}}"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_eq!(offsets.load(ID).map(|s| s.at), None, "a symbolic link");
        std::fs::remove_file(&path).unwrap();
        // A FIFO nobody writes: opening it must not block.
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let offsets = Arc::new(offsets);
        let reader = Arc::clone(&offsets);
        std::thread::spawn(move || {
            let _ = tx.send(reader.load(ID));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reading a FIFO offset file blocked");
        assert_eq!(got, None, "a FIFO");
        // A write replaces it with a regular file, read again.
        let id: Arc<str> = Arc::from(ID);
        offsets.register(&id, Position { ino: 5, offset: 6 }, None);
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position { ino: 5, offset: 6 })
        );
    }

    #[test]
    fn registering_a_container_writes_its_file_only() {
        let (_root, offsets) = offsets();
        let a: Arc<str> = Arc::from(ID);
        let b: Arc<str> = Arc::from("abc");
        offsets.register(&a, Position { ino: 1, offset: 0 }, None);
        offsets.acknowledge(ID, Position { ino: 1, offset: 10 }, None);
        offsets.register(&b, Position { ino: 2, offset: 0 }, None);
        assert_eq!(
            offsets.load("abc").map(|s| s.at),
            Some(Position { ino: 2, offset: 0 })
        );
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position { ino: 1, offset: 0 }),
            "another container's start does not write this one's file"
        );
        assert_eq!(offsets.save(true), 1, "its move is still due");
        assert_eq!(
            offsets.load(ID).map(|s| s.at),
            Some(Position { ino: 1, offset: 10 })
        );
    }

    #[test]
    fn pruning_removes_files_of_containers_gone_and_temporary_files() {
        let (_root, offsets) = offsets();
        let kept: Arc<str> = Arc::from(ID);
        let gone: Arc<str> = Arc::from("abc");
        let name = Some(Arc::<str>::from("1-1"));
        offsets.register(&kept, Position { ino: 1, offset: 1 }, name.clone());
        offsets.register(&gone, Position { ino: 1, offset: 1 }, name);
        std::fs::write(offsets.dir().join(".abc.x1y2.tmp"), "x").unwrap();
        std::fs::write(offsets.dir().join("README"), "not ours").unwrap();
        std::fs::write(offsets.dir().join(NAMES_DIR).join(".abc.x.tmp"), "x").unwrap();
        assert_eq!(offsets.prune(|id| id == ID), 4);
        let listing = |dir: PathBuf| {
            let mut left: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            left
        };
        assert_eq!(listing(offsets.dir().to_owned()), [ID, "README", NAMES_DIR]);
        assert_eq!(listing(offsets.dir().join(NAMES_DIR)), [ID]);
        // A container forgotten: both its files go.
        offsets.forget(ID);
        assert_eq!(listing(offsets.dir().to_owned()), ["README", NAMES_DIR]);
        assert!(listing(offsets.dir().join(NAMES_DIR)).is_empty());
    }
}
