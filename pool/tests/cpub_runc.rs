//! `scripts/cpub-runc`, the instances' OCI runtime: `start <id>` of a
//! container runc created is done through its exec fifo (as `runc start`
//! does it), everything else goes to runc unchanged. Runs the script against
//! a runc state directory of its own (`CPUB_RUNC_ROOT`) with a thread in the
//! role of the container's init process, and `echo` in runc's
//! (`CPUB_RUNC`).
//! The real path (Podman's service started with it, a container's state,
//! exit code and events) is covered by `tests/podman.rs` and the e2e suite,
//! which run on that service.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cpub-runc")
}

/// Runs the script with `root` as runc's state directory and `echo` in
/// runc's place: what would go to runc is printed.
fn run(root: &Path, args: &[&str]) -> Output {
    Command::new("sh")
        .arg(script())
        .args(args)
        .env("CPUB_RUNC_ROOT", root)
        .env("CPUB_RUNC", "echo")
        .output()
        .unwrap()
}

/// A runc state directory holding container `ID` created and waiting.
fn created() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join(ID)).unwrap();
    let fifo = root.path().join(ID).join("exec.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    (root, fifo)
}

/// The container's init process: blocks opening the fifo for writing until
/// a reader comes, writes `answer`, closes it (its `exec`).
fn init_process(fifo: PathBuf, answer: &'static [u8]) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
        w.write_all(answer).unwrap();
    })
}

/// Joins the init thread, first releasing it if it is still blocked in its
/// open (the script never opened the fifo): the test then fails, never hangs.
fn join(init: std::thread::JoinHandle<()>, fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK (Linux): a reader that does not wait for a writer.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(0o4000)
        .open(fifo);
    init.join().unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_created_container_is_started_through_its_fifo() {
    let (root, fifo) = created();
    let init = init_process(fifo.clone(), b"0");
    let out = run(root.path(), &["start", ID]);
    join(init, &fifo);
    assert!(out.status.success(), "{}", stderr(&out));
    // runc was not called (it would have printed its arguments).
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);
    // Gone, as `runc start` leaves it: runc now reports the container running.
    assert!(!fifo.exists());
    // A second start finds no fifo and is runc's to answer.
    let again = run(root.path(), &["start", ID]);
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        format!("start {ID}\n")
    );
}

#[test]
fn an_init_process_that_never_answers_fails_the_start_in_bounded_time() {
    let (root, fifo) = created();
    let t = Instant::now();
    let out = run(root.path(), &["start", ID]);
    let took = t.elapsed();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("did not answer"), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing was started: the fifo stays, for the removal to clean up.
    assert!(fifo.exists());
}

#[test]
fn an_answer_other_than_zero_fails_the_start() {
    let (root, fifo) = created();
    let init = init_process(fifo.clone(), b"1");
    let out = run(root.path(), &["start", ID]);
    join(init, &fifo);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("wrote '1'"), "{}", stderr(&out));
    assert!(fifo.exists());
}

#[test]
fn everything_else_goes_to_runc_unchanged() {
    let (root, _fifo) = created();
    let upper = ID.to_uppercase();
    let cases: &[&[&str]] = &[
        // Podman's other calls.
        &["create", "--bundle", "/b", "--pid-file", "/p", ID],
        &["kill", ID, "15"],
        &["delete", "--force", ID],
        &["state", ID],
        // A start with flags, or of an id that is not a container id: the
        // fifo path is never built from it.
        &["start", "--help"],
        &["start", ID, "extra"],
        &["start", "../../etc"],
        &["start", &upper],
        &["start", &ID[1..]],
    ];
    for args in cases {
        let out = run(root.path(), args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{}\n", args.join(" ")),
            "{args:?}"
        );
    }
}
