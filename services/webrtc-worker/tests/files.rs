//! File transfer between real worker processes over real DataChannels: a 256 MiB file arrives
//! intact; a transfer survives its link being hung up and either side being killed (SIGKILL) and
//! restarted, without re-sending verified chunks; a flipped byte is caught and repaired; a refused
//! transfer leaves nothing on the receiver's disk; a chunk spoilt on the receiver's disk is caught
//! by the whole-file check and sent again; an abandoned partial file expires; bad requests get
//! clear errors.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)] // Tests fail loudly by design.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Mesh, Peer};
use mesh_store::Store;
use mesh_store::embedded::EmbeddedStore;
use mesh_testkit::process::eventually;
use mesh_testkit::workers::files_dir;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// Writes `size` bytes of a seeded pseudo-random stream (xorshift: cheap in a debug build).
fn make_file(path: &Path, size: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn same_contents(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

struct Setup {
    mesh: Mesh,
    outbox: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let mesh = Mesh::new();
        let outbox = mesh.dir.path().join("outbox");
        std::fs::create_dir_all(&outbox).unwrap();
        Setup { mesh, outbox }
    }

    fn worker(&self, name: &str, seed: u64, extra: &[(&str, &str)]) -> Peer {
        let root = self.outbox.display().to_string();
        let mut env: Vec<(&str, &str)> = vec![("MESH_SEND_ROOT", root.as_str())];
        env.extend_from_slice(extra);
        self.mesh.worker(name, seed, &env)
    }

    fn received(&self, receiver: &str, sender: &str, name: &str) -> PathBuf {
        files_dir(&self.mesh.store_dir(), receiver)
            .join("received")
            .join(sender)
            .join(name)
    }

    /// Files left under the receiver's `.partial` directory.
    fn partial_files(&self, receiver: &str) -> Vec<PathBuf> {
        let dir = files_dir(&self.mesh.store_dir(), receiver).join(".partial");
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    async fn send(&self, from: &Peer, to: &Peer, name: &str) -> String {
        let (status, body) = self
            .mesh
            .post(
                from,
                "/transfers",
                &json!({"to": to.identity.id(), "path": name}),
            )
            .await;
        assert_eq!(status, 202, "{body}\n{}", from.proc.log());
        body["id"].as_str().unwrap().to_string()
    }

    async fn view(&self, p: &Peer, id: &str) -> Value {
        self.mesh.get(p, &format!("/transfers/{id}")).await
    }

    /// Waits until `p`'s view of transfer `id` satisfies `until`; returns it.
    async fn wait(
        &self,
        p: &Peer,
        id: &str,
        what: &str,
        within: Duration,
        until: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(within, what, || async {
            let v = self.view(p, id).await;
            assert!(
                !(v["state"] == "failed" || v["state"] == "refused" || v["state"] == "cancelled")
                    || until(&v),
                "transfer ended early: {v}\n{}",
                p.proc.log()
            );
            until(&v).then_some(v)
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_file_arrives_intact_with_progress_in_the_store() {
    let s = Setup::new();
    make_file(&s.outbox.join("big.bin"), 256 * MIB, 1);
    let a = s.worker("file-a", 41, &[]);
    let b = s.worker("file-b", 42, &[]);
    s.mesh.connect(&a, &b).await;
    s.mesh.wait_up(&a, &b).await;

    let id = s.send(&a, &b, "big.bin").await;
    let done = s
        .wait(
            &a,
            &id,
            "the transfer to complete",
            Duration::from_secs(600),
            |v| v["state"] == "complete",
        )
        .await;
    assert_eq!(done["bytes"], 256 * MIB, "{done}");
    assert_eq!(done["sentBytes"], 256 * MIB, "nothing sent twice: {done}");
    assert_eq!(done["repairedChunks"], 0);
    let got = s.received("file-b", "file-a", "big.bin");
    assert!(same_contents(&s.outbox.join("big.bin"), &got));
    assert!(
        s.partial_files("file-b").is_empty(),
        "{:?}",
        s.partial_files("file-b")
    );
    let theirs = s.view(&b, &id).await;
    assert_eq!(theirs["direction"], "in");
    assert_eq!(theirs["state"], "complete");
    assert_eq!(theirs["path"], got.display().to_string());

    // The sender's record reaches the store (through its spool) as it ends.
    let store = EmbeddedStore::open(s.mesh.store_dir()).await.unwrap();
    let stored = eventually(Duration::from_secs(10), "the stored record", || async {
        store
            .list_transfers(10)
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.id.to_string() == id && t.bytes == 256 * MIB)
    })
    .await;
    assert_eq!(stored.name, "big.bin");
    assert_eq!(stored.size, 256 * MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_resumes_after_a_hang_up_and_after_either_side_is_killed() {
    let s = Setup::new();
    let size = 96 * MIB;
    make_file(&s.outbox.join("resume.bin"), size, 2);
    // Four chunks in flight at most: what a resume may send twice is bounded by that.
    let window = [("MESH_FILES_WINDOW", "4")];
    let mut a = s.worker("res-a", 51, &window);
    let mut b = s.worker("res-b", 52, &[]);
    s.mesh.connect(&a, &b).await;
    s.mesh.wait_up(&a, &b).await;
    let id = s.send(&a, &b, "resume.bin").await;
    // Progress is read from the receiver, whose view moves with every chunk it verifies (the
    // sender's record is written at most once a second: on a fast machine the rest of the file
    // can go in that time, and the break would come after the end).
    let at_least = |n: u64| move |v: &Value| v["bytes"].as_u64().unwrap_or(0) >= n;

    // 1. The receiver hangs up mid-way: the sender's transfer gets the link back and goes on.
    s.wait(
        &b,
        &id,
        "a quarter verified",
        Duration::from_secs(120),
        at_least(size / 4),
    )
    .await;
    assert_eq!(s.mesh.hang_up(&b, "res-a").await, 200);
    s.wait(
        &a,
        &id,
        "a resume after the hang-up",
        Duration::from_secs(60),
        |v| v["resumes"].as_u64().unwrap() >= 1,
    )
    .await;

    // 2. The receiver is killed and restarted from its disk.
    s.wait(
        &b,
        &id,
        "half verified",
        Duration::from_secs(120),
        at_least(size / 2),
    )
    .await;
    b.proc.signal("-KILL");
    drop(b);
    // The store shows the gap: the link is written down while the receiver is gone.
    let store = EmbeddedStore::open(s.mesh.store_dir()).await.unwrap();
    let link: mesh_types::LinkId = "res-a<->res-b".parse().unwrap();
    eventually(
        Duration::from_secs(30),
        "the link down in the store",
        || async {
            (store.get_link(&link).await.ok()?.health == mesh_types::Health::Down).then_some(())
        },
    )
    .await;
    b = s.worker("res-b", 52, &[]);
    let v = s
        .wait(
            &a,
            &id,
            "a resume after the receiver's restart",
            Duration::from_secs(60),
            |v| v["resumes"].as_u64().unwrap() >= 2,
        )
        .await;
    // Verified chunks were not sent again: beyond what is verified, only what was in flight at
    // each break (at most the window, 4 chunks of 1 MiB; a loaded machine may see the link
    // drop more than the twice we caused) and what is in flight now.
    let sent = v["sentBytes"].as_u64().unwrap();
    let verified = v["bytes"].as_u64().unwrap();
    let breaks = v["resumes"].as_u64().unwrap();
    assert!(
        sent <= verified + (breaks + 1) * 4 * MIB,
        "sent {sent} for {verified} verified: {v}"
    );

    // 3. The sender is killed and restarted: it resumes from its own state file.
    s.wait(
        &b,
        &id,
        "three quarters verified",
        Duration::from_secs(120),
        at_least(3 * size / 4),
    )
    .await;
    let before = s.view(&a, &id).await;
    a.proc.signal("-KILL");
    drop(a);
    a = s.worker("res-a", 51, &window);
    let done = s
        .wait(
            &a,
            &id,
            "completion after the sender's restart",
            Duration::from_secs(180),
            |v| v["state"] == "complete",
        )
        .await;
    // After the restart, only what was not yet verified went out (plus what was in flight).
    // (`sentBytes` counts from the worker's start.)
    let resent = done["sentBytes"].as_u64().unwrap();
    let missing = size - before["bytes"].as_u64().unwrap();
    let breaks = done["resumes"].as_u64().unwrap() - before["resumes"].as_u64().unwrap();
    assert!(
        resent <= missing + breaks * 4 * MIB,
        "{resent} sent for {missing} missing: {done}"
    );
    assert!(done["resumes"].as_u64().unwrap() >= 3, "{done}");
    assert!(same_contents(
        &s.outbox.join("resume.bin"),
        &s.received("res-b", "res-a", "resume.bin")
    ));
    // The restarted receiver took the transfer up from its checkpoint (an offer for a transfer
    // it knew), rather than starting it over.
    let theirs = s.view(&b, &id).await;
    assert_eq!(theirs["state"], "complete", "{theirs}");
    assert!(theirs["resumes"].as_u64().unwrap() >= 1, "{theirs}");
    assert!(s.partial_files("res-b").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_partial_file_expires_and_records_of_ended_transfers_go() {
    let s = Setup::new();
    let size = 64 * MIB;
    make_file(&s.outbox.join("abandoned.bin"), size, 4);
    let keep = [("MESH_FILES_KEEP_SECS", "3")];
    let a = s.worker("exp-a", 61, &keep);
    let b = s.worker("exp-b", 62, &keep);
    s.mesh.connect(&a, &b).await;
    s.mesh.wait_up(&a, &b).await;
    let id = s.send(&a, &b, "abandoned.bin").await;
    s.wait(
        &b,
        &id,
        "some bytes received",
        Duration::from_secs(60),
        // No view until the offer arrives.
        |v| v["bytes"].as_u64().unwrap_or(0) >= 2 * MIB,
    )
    .await;

    let part = files_dir(&s.mesh.store_dir(), "exp-b")
        .join(".partial")
        .join(format!("{id}.part"));
    assert!(part.exists(), "{}", part.display());

    // The sender vanishes for good: after 3 s without progress the receiver removes the
    // partial file and says why.
    a.proc.signal("-KILL");
    drop(a);
    let expired = eventually(
        Duration::from_secs(30),
        "the partial file expired",
        || async {
            let v = s.view(&b, &id).await;
            (v["state"] == "failed").then_some(v)
        },
    )
    .await;
    assert_eq!(expired["errorCode"], "expired", "{expired}");
    assert!(
        expired["error"]
            .as_str()
            .unwrap()
            .contains("no progress for 3 s")
    );
    // The partial file that was there is gone, with everything kept beside it.
    assert!(!part.exists(), "{}", part.display());
    assert!(
        s.partial_files("exp-b").is_empty(),
        "{:?}",
        s.partial_files("exp-b")
    );

    // It comes back after all: its offer starts the transfer over and it completes.
    let a = s.worker("exp-a", 61, &keep);
    let done = s
        .wait(&a, &id, "completion", Duration::from_secs(120), |v| {
            v["state"] == "complete"
        })
        .await;
    assert_eq!(done["bytes"].as_u64().unwrap(), size);
    let received = s.received("exp-b", "exp-a", "abandoned.bin");
    assert!(same_contents(&s.outbox.join("abandoned.bin"), &received));

    // Both records of the ended transfer go 3 s later; the received file stays.
    for (p, dir) in [(&a, "outgoing"), (&b, "done")] {
        eventually(Duration::from_secs(30), "the record removed", || async {
            (s.view(p, &id).await["error"]["code"] == "no_transfer").then_some(())
        })
        .await;
        let left =
            std::fs::read_dir(files_dir(&s.mesh.store_dir(), p.identity.id().as_str()).join(dir))
                .unwrap()
                .count();
        assert_eq!(left, 0, "{dir} of {}", p.identity.id());
    }
    assert!(same_contents(&s.outbox.join("abandoned.bin"), &received));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_spoilt_on_the_receivers_disk_is_caught_by_the_whole_file_check_and_sent_again() {
    let s = Setup::new();
    let size = 64 * MIB;
    make_file(&s.outbox.join("spoilt.bin"), size, 5);
    let a = s.worker("sp-a", 71, &[]);
    let mut b = s.worker("sp-b", 72, &[]);
    s.mesh.connect(&a, &b).await;
    s.mesh.wait_up(&a, &b).await;
    let id = s.send(&a, &b, "spoilt.bin").await;
    // The receiver's view moves with every chunk it verifies.
    s.wait(&b, &id, "4 MiB verified", Duration::from_secs(60), |v| {
        v["bytes"].as_u64().unwrap_or(0) >= 4 * MIB
    })
    .await;
    // The receiver goes down, and a chunk it had verified is spoilt on its disk meanwhile
    // (what a write lost to a power cut looks like).
    b.proc.signal("-KILL");
    drop(b);
    let part = files_dir(&s.mesh.store_dir(), "sp-b")
        .join(".partial")
        .join(format!("{id}.part"));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&part)
            .unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, 100).unwrap();
        f.write_all_at(&[byte[0] ^ 0xff], 100).unwrap();
    }
    b = s.worker("sp-b", 72, &[]);
    let done = s
        .wait(&a, &id, "completion", Duration::from_secs(120), |v| {
            v["state"] == "complete"
        })
        .await;
    assert!(done["repairedChunks"].as_u64().unwrap() >= 1, "{done}");
    // The receiver took the transfer up from its checkpoint, which counts the spoilt chunk as
    // verified (so it is not sent again as missing), and then asked for a chunk again: with no
    // fault on the way, only the whole-file check, which reads the file, finds a verified chunk
    // bad.
    let theirs = s.view(&b, &id).await;
    assert_eq!(theirs["state"], "complete", "{theirs}");
    assert!(theirs["resumes"].as_u64().unwrap() >= 1, "{theirs}");
    assert!(
        theirs["repairedChunks"].as_u64().unwrap() >= 1,
        "{theirs}\n{}",
        b.proc.log()
    );
    assert!(same_contents(
        &s.outbox.join("spoilt.bin"),
        &s.received("sp-b", "sp-a", "spoilt.bin")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_detected_and_the_chunk_sent_again() {
    let s = Setup::new();
    make_file(&s.outbox.join("flip.bin"), 8 * MIB + 123, 3);
    let a = s.worker("flip-a", 61, &[("MESH_FAULT_FLIP_CHUNK", "2")]);
    let b = s.worker("flip-b", 62, &[]);
    s.mesh.connect(&a, &b).await;
    s.mesh.wait_up(&a, &b).await;
    let id = s.send(&a, &b, "flip.bin").await;
    let done = s
        .wait(
            &a,
            &id,
            "the transfer to complete",
            Duration::from_secs(120),
            |v| v["state"] == "complete",
        )
        .await;
    assert_eq!(done["repairedChunks"], 1, "{done}");
    assert!(a.proc.log().contains("fault injection"));
    // The receiver found the chunk bad (its digest) and had it again, once.
    let theirs = s.view(&b, &id).await;
    assert_eq!(theirs["state"], "complete", "{theirs}");
    assert_eq!(theirs["repairedChunks"], 1, "{theirs}\n{}", b.proc.log());
    assert!(same_contents(
        &s.outbox.join("flip.bin"),
        &s.received("flip-b", "flip-a", "flip.bin")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_transfers_leave_nothing_on_disk_and_bad_requests_get_clear_errors() {
    let s = Setup::new();
    make_file(&s.outbox.join("four.bin"), 4 * MIB, 4);
    let a = s.worker("ref-a", 71, &[]);
    // Takes files of up to 1 MiB, and only from ref-a.
    let b = s.worker(
        "ref-b",
        72,
        &[
            ("MESH_FILES_MAX_BYTES", "1048576"),
            ("MESH_FILES_ACCEPT_FROM", "ref-a"),
        ],
    );
    let c = s.worker("ref-c", 73, &[]);
    s.mesh.connect(&a, &b).await;
    s.mesh.wait_up(&a, &b).await;
    s.mesh.connect(&c, &b).await;
    s.mesh.wait_up(&c, &b).await;

    let id = s.send(&a, &b, "four.bin").await;
    let v = s
        .wait(&a, &id, "the refusal", Duration::from_secs(60), |v| {
            v["state"] == "refused"
        })
        .await;
    assert_eq!(v["errorCode"], "too_large", "{v}");
    let id = s.send(&c, &b, "four.bin").await;
    let v = s
        .wait(&c, &id, "the refusal", Duration::from_secs(60), |v| {
            v["state"] == "refused"
        })
        .await;
    assert_eq!(v["errorCode"], "unknown_sender", "{v}");
    assert!(s.partial_files("ref-b").is_empty());
    assert!(
        !files_dir(&s.mesh.store_dir(), "ref-b")
            .join("received")
            .join("ref-a")
            .exists()
    );
    assert!(
        !files_dir(&s.mesh.store_dir(), "ref-b")
            .join("received")
            .join("ref-c")
            .exists()
    );

    // Requests the worker turns down before anything starts.
    std::fs::write(s.mesh.dir.path().join("secret"), b"not for sending").unwrap();
    for (body, status, code) in [
        (
            json!({"to": "ref-b", "path": "../secret"}),
            403,
            "path_not_allowed",
        ),
        (
            json!({"to": "ref-b", "path": "nope.bin"}),
            404,
            "file_not_found",
        ),
        (
            json!({"to": "nobody", "path": "four.bin"}),
            404,
            "unknown_peer",
        ),
        (
            json!({"to": "ref-a", "path": "four.bin"}),
            400,
            "invalid_input",
        ),
        (json!({"to": "ref-b"}), 400, "bad_json"),
    ] {
        let (s2, err) = s.mesh.post(&a, "/transfers", &body).await;
        assert_eq!(
            (s2, err["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {err}"
        );
    }
    let missing = s
        .mesh
        .get(&a, "/transfers/00000000000000000000000000000000")
        .await;
    assert_eq!(missing["error"]["code"], "no_transfer");
    let bad = s.mesh.get(&a, "/transfers/xyz").await;
    assert_eq!(bad["error"]["code"], "invalid_input");
}
