//! Follows the kernel log (`/dev/kmsg`) for OOM kills in containers: the
//! kernel writes `oom-kill:…,task_memcg=/libpod_parent/libpod-<id>,…`
//! (cgroup v1; `…/libpod-<id>.scope` on v2) when it kills a process for
//! memory. This is the one record of an OOM kill that takes an instance
//! down: its cgroup (with its `oom_kill` count) is gone within
//! milliseconds, and Podman 4.3 with runc on cgroup v1 reports
//! `OOMKilled: false` (both seen on this project's machine).
//!
//! The ids are handed to `crate::node_status`, which counts only those of
//! this node's instances (other nodes and programs share the kernel log).
//! Without read access to `/dev/kmsg` (not root, a container), the watcher
//! logs that once and the OOM kills counted are the ones the cgroup reads
//! and Podman see.

use std::collections::VecDeque;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Mutex;

/// Container ids seen killed and not yet taken; the oldest go first.
const MAX_PENDING: usize = 1024;

static PENDING: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The container id of a kernel OOM-kill record, if it is one.
pub fn killed_container(record: &str) -> Option<&str> {
    let message = record.split_once(';').map_or(record, |(_, m)| m);
    if !message.starts_with("oom-kill:") {
        return None;
    }
    let memcg = message
        .split(',')
        .find_map(|f| f.strip_prefix("task_memcg="))?;
    let last = memcg.trim().rsplit('/').next()?;
    let id = last.strip_prefix("libpod-")?;
    let id = id.strip_suffix(".scope").unwrap_or(id);
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The ids seen since the last call.
pub fn take() -> Vec<String> {
    PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain(..)
        .collect()
}

fn push(id: &str) {
    let mut pending = PENDING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if pending.len() >= MAX_PENDING {
        pending.pop_front();
    }
    pending.push_back(id.to_owned());
}

/// Starts the watcher thread (from now on: earlier records are skipped).
pub fn start() {
    let file = std::fs::File::open("/dev/kmsg").and_then(|mut f| {
        f.seek(SeekFrom::End(0))?;
        Ok(f)
    });
    let mut file = match file {
        Ok(f) => f,
        Err(e) => {
            tracing::info!(error = %e, "the kernel log cannot be read: OOM kills that end an instance are counted only when Podman reports them");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("cpub-oom-watch".into())
        .spawn(move || {
            // One record per read; a record is at most about 8 KiB.
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        let record = String::from_utf8_lossy(&buf[..n]);
                        if let Some(id) = killed_container(&record) {
                            tracing::info!(container = %id, "the kernel killed a process for memory");
                            push(id);
                        }
                    }
                    // Records overwritten before they were read.
                    Err(e) if e.raw_os_error() == Some(libc_epipe()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the kernel log stopped");
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the OOM watcher");
    }
}

/// `EPIPE` (32 on Linux).
const fn libc_epipe() -> i32 {
    32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_records_name_the_container() {
        let id = "79d9027d63b9737cd6f21beeb65c99a90c9f8173e176493efc7f1b09b7eed2fd";
        let v1 = format!(
            "6,3456,32222191260,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),\
             cpuset=libpod-{id},mems_allowed=0,oom_memcg=/libpod_parent/libpod-{id},\
             task_memcg=/libpod_parent/libpod-{id},task=chatty,pid=13523,uid=0\n"
        );
        assert_eq!(killed_container(&v1), Some(id));
        let v2 = format!(
            "6,1,2,-;oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/machine.slice/libpod-{id}.scope,task=x\n"
        );
        assert_eq!(killed_container(&v2), Some(id));
        assert_eq!(
            killed_container("6,1,2,-;Memory cgroup out of memory: Killed process 1 (x)"),
            None
        );
        assert_eq!(
            killed_container(
                "6,1,2,-;oom-kill:constraint=CONSTRAINT_NONE,task_memcg=/user.slice,task=x"
            ),
            None
        );
        assert_eq!(
            killed_container("6,1,2,-;oom-kill:task_memcg=/libpod_parent/libpod-../../etc,task=x"),
            None
        );
        assert_eq!(killed_container("garbage"), None);
    }
}
