//! The file side of transfers, all blocking (callers run it on tokio's blocking pool): hashing a
//! file into a manifest, reading and checking a chunk, writing a checked chunk, checkpoints,
//! the whole-file check, moving a finished file into place, and free space.
//!
//! Layout under the files directory: `received/<from>/<name>` for finished files,
//! `.partial/<id>.part` and `.partial/<id>.json` (the receiver's checkpoint) while receiving,
//! `done/<id>.json` once received, `outgoing/<id>.json` (the sender's record) while sending.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use mesh_types::transfer::{Digest, Manifest, PIECE_HEADER, PIECE_SIZE, Piece, TransferId};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The directories of one worker's transfers.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn received(&self) -> PathBuf {
        self.root.join("received")
    }
    pub fn partial_dir(&self) -> PathBuf {
        self.root.join(".partial")
    }
    pub fn part(&self, id: TransferId) -> PathBuf {
        self.partial_dir().join(format!("{id}.part"))
    }
    pub fn checkpoint(&self, id: TransferId) -> PathBuf {
        self.partial_dir().join(format!("{id}.json"))
    }
    /// The verified chunks of a transfer being received, one bit each: rewritten in place after
    /// every chunk (the checkpoint's JSON, with the manifest, is written once).
    pub fn have(&self, id: TransferId) -> PathBuf {
        self.partial_dir().join(format!("{id}.have"))
    }
    /// Records of finished receptions, so a sender that missed our `done` hears it again.
    pub fn done_dir(&self) -> PathBuf {
        self.root.join("done")
    }
    pub fn done(&self, id: TransferId) -> PathBuf {
        self.done_dir().join(format!("{id}.json"))
    }
    pub fn outgoing_dir(&self) -> PathBuf {
        self.root.join("outgoing")
    }
    pub fn outgoing(&self, id: TransferId) -> PathBuf {
        self.outgoing_dir().join(format!("{id}.json"))
    }

    pub fn create(&self) -> io::Result<()> {
        for d in [
            self.received(),
            self.partial_dir(),
            self.done_dir(),
            self.outgoing_dir(),
        ] {
            fs::create_dir_all(d)?;
        }
        Ok(())
    }
}

/// How much of the file each hashing pass reads at a time: small enough that the bytes are
/// still in the core's cache when they are hashed (hashing bytes fetched from memory runs at about
/// two thirds of the speed here).
const HASH_READ: usize = 256 << 10;

/// Hashes `path` into its size, whole-file digest and chunk digests. The whole-file digest is
/// one sequential pass, so the chunk digests are computed by a second pass on a thread of its
/// own: with two cores the manifest is ready in about the time of one pass.
pub fn hash_file(path: &Path, chunk_size: u32) -> io::Result<(u64, Digest, Vec<Digest>)> {
    // The two passes read the file apart: both must have read the same file.
    let stamp = |path: &Path| fs::metadata(path).and_then(|m| Ok((m.len(), m.modified()?)));
    let before = stamp(path)?;
    let (whole, chunks) = std::thread::scope(|scope| {
        let chunks = std::thread::Builder::new()
            .name("mesh-hash".into())
            .spawn_scoped(scope, || hash_chunks(path, chunk_size));
        let whole = hash_whole(path);
        let chunks = match chunks {
            Ok(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the chunk hashing thread panicked"))),
            Err(e) => Err(e),
        };
        (whole, chunks)
    });
    let ((size, whole), (chunks_size, chunks)) = (whole?, chunks?);
    if size != chunks_size || stamp(path)? != before {
        return Err(io::Error::other(
            "the file changed while it was being hashed",
        ));
    }
    Ok((size, whole, chunks))
}

fn hash_whole(path: &Path) -> io::Result<(u64, Digest)> {
    let mut f = File::open(path)?;
    let mut state = sha2::Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf)?;
        state.update(&buf[..n]);
        size += n as u64;
        if n < buf.len() {
            return Ok((size, Digest(state.finalize().into())));
        }
    }
}

fn hash_chunks(path: &Path, chunk_size: u32) -> io::Result<(u64, Vec<Digest>)> {
    let mut f = File::open(path)?;
    let chunk_size = u64::from(chunk_size.max(1));
    let mut buf = vec![0u8; HASH_READ.min(chunk_size as usize)];
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let mut state = sha2::Sha256::new();
        let mut in_chunk = 0u64;
        while in_chunk < chunk_size {
            let want = buf.len().min((chunk_size - in_chunk) as usize);
            let n = read_full(&mut f, &mut buf[..want])?;
            state.update(&buf[..n]);
            in_chunk += n as u64;
            if n < want {
                break;
            }
        }
        size += in_chunk;
        if in_chunk > 0 {
            chunks.push(Digest(state.finalize().into()));
        }
        if in_chunk < chunk_size {
            return Ok((size, chunks));
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The most of a chunk the sender reads at a time: memory does not grow with the chunk size.
/// Whole pieces covering 1 MiB, so the smallest chunk is one read and pieces stay whole.
pub const READ_BATCH: usize = (1usize << 20).div_ceil(PIECE_SIZE) * PIECE_SIZE;

/// The pieces of chunk `i` of the file behind `manifest` from `offset` on, up to
/// [`READ_BATCH`] bytes of it: each a piece header followed by its data, read from the file
/// straight into place (no copy on the way to the channel). `None` if the file ends before
/// them: it no longer holds what the manifest promised.
pub fn read_pieces(
    file: &File,
    manifest: &Manifest,
    i: u32,
    offset: u32,
) -> io::Result<Option<Vec<BytesMut>>> {
    let len = manifest.chunk_len(i) as usize;
    let start = manifest.chunk_offset(i);
    let end = len.min(offset as usize + READ_BATCH);
    let mut pieces = Vec::with_capacity(READ_BATCH / PIECE_SIZE);
    let mut header = Vec::with_capacity(PIECE_HEADER);
    let mut at = offset as usize;
    while at < end {
        let n = (end - at).min(PIECE_SIZE);
        Piece {
            id: manifest.id,
            chunk: i,
            offset: at as u32,
            data: &[],
        }
        .encode_into(&mut header);
        let mut buf = BytesMut::zeroed(PIECE_HEADER + n);
        buf[..PIECE_HEADER].copy_from_slice(&header);
        match file.read_exact_at(&mut buf[PIECE_HEADER..], start + at as u64) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        pieces.push(buf);
        at += n;
    }
    Ok(Some(pieces))
}

/// Whether chunk `i` of the file behind `manifest` still matches its digest (read a little at a
/// time, not held). The receiver checks every chunk; a sender checks again only a chunk the
/// receiver found bad, to tell a fault on the way from a file that changed.
pub fn chunk_matches(file: &File, manifest: &Manifest, i: u32) -> io::Result<bool> {
    let len = u64::from(manifest.chunk_len(i));
    let start = manifest.chunk_offset(i);
    let mut digest = sha2::Sha256::new();
    let mut buf = vec![0u8; HASH_READ];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(HASH_READ as u64) as usize;
        match file.read_exact_at(&mut buf[..n], start + at) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        digest.update(&buf[..n]);
        at += n as u64;
    }
    Ok(manifest.chunks.get(i as usize) == Some(&Digest(digest.finalize().into())))
}

/// The receiving end of a transfer's pieces (on a bulk thread): writes each at its place in the
/// part file as it comes, feeding the digest of its chunk and, while the chunks come in order
/// from the first, the whole file's, and says at the end of each chunk whether it matched. So a
/// piece is hashed while it is in the core's cache, and memory holds pieces, not chunks. A chunk
/// is on disk before it is known good; only a good one gets its bit in `have`, a bad one is
/// written over when it comes again, and the rename waits for the whole-file check. (The
/// receiver's state machine passes no piece of a chunk that is verified or being checked, so a
/// good chunk is written again only when the whole-file check has found it bad after all.)
#[derive(Debug)]
pub struct ChunkWriter {
    file: std::sync::Arc<File>,
    manifest: std::sync::Arc<Manifest>,
    current: Option<ChunkDigest>,
    /// The whole file's digest over the chunks before `whole_next`.
    whole: sha2::Sha256,
    whole_next: u32,
}

#[derive(Debug)]
struct ChunkDigest {
    chunk: u32,
    state: sha2::Sha256,
    /// The whole file's digest carried on through this chunk, if it is the next one; kept
    /// only if the chunk proves good.
    whole: Option<sha2::Sha256>,
}

/// What the check at the end of a chunk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub chunk: u32,
    pub good: bool,
    /// The whole file's digest, once every chunk has gone through in order from the first (any
    /// other order, a resume or a repair, leaves it to the whole-file check to read the file).
    pub whole: Option<Digest>,
}

impl ChunkWriter {
    pub fn new(file: std::sync::Arc<File>, manifest: std::sync::Arc<Manifest>) -> Self {
        ChunkWriter {
            file,
            manifest,
            current: None,
            whole: sha2::Sha256::new(),
            whole_next: 0,
        }
    }

    /// Takes the piece at `offset` in `chunk` (as the receiver's state machine passes them: in
    /// order from the chunk's first); at the chunk's `last` piece, the result of its check.
    pub fn piece(
        &mut self,
        chunk: u32,
        offset: u32,
        data: &[u8],
        last: bool,
    ) -> io::Result<Option<Checked>> {
        if offset == 0 {
            self.current = Some(ChunkDigest {
                chunk,
                state: sha2::Sha256::new(),
                whole: (chunk == self.whole_next).then(|| self.whole.clone()),
            });
        }
        let Some(c) = self.current.as_mut().filter(|c| c.chunk == chunk) else {
            // Not a piece of the chunk under way (the state machine passes none such): not
            // written; if it ends its chunk, that chunk is asked for again.
            return Ok(last.then(|| self.checked(chunk, false)));
        };
        c.state.update(data);
        if let Some(w) = &mut c.whole {
            w.update(data);
        }
        self.file
            .write_all_at(data, self.manifest.chunk_offset(chunk) + u64::from(offset))?;
        if !last {
            return Ok(None);
        }
        let Some(c) = self.current.take() else {
            return Ok(None);
        };
        let good =
            self.manifest.chunks.get(chunk as usize) == Some(&Digest(c.state.finalize().into()));
        if good && let Some(w) = c.whole {
            self.whole = w;
            self.whole_next += 1;
        }
        Ok(Some(self.checked(chunk, good)))
    }

    fn checked(&self, chunk: u32, good: bool) -> Checked {
        let whole = (self.whole_next == self.manifest.chunk_count())
            .then(|| Digest(self.whole.clone().finalize().into()));
        Checked { chunk, good, whole }
    }
}

/// The receiver's checkpoint: enough to resume after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub manifest: Manifest,
    pub have: Vec<u32>,
    /// Where the finished file went; set once it is in place.
    #[serde(default)]
    pub done_path: Option<PathBuf>,
    pub started_at: u64,
}

/// Writes `value` as JSON to `path` atomically (a temporary file, synced, then renamed).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<T> {
    serde_json::from_slice(&fs::read(path)?).map_err(io::Error::other)
}

/// The `.json` files in `dir`.
pub fn json_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Records `have` (chunk indices) as a bitmap at the start of `path`. Not synced: it survives
/// the process being killed; what a power loss takes back the whole-file check catches.
pub fn write_have(path: &Path, have: &[u32]) -> io::Result<()> {
    let len = have.iter().max().map_or(0, |m| *m as usize / 8 + 1);
    let mut bits = vec![0u8; len];
    for &c in have {
        bits[c as usize / 8] |= 1 << (c % 8);
    }
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    f.write_all_at(&bits, 0)
}

/// The chunk indices [`write_have`] recorded at `path`; none when there is no such file.
pub fn read_have(path: &Path) -> io::Result<Vec<u32>> {
    let bits = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok((0..bits.len() as u32 * 8)
        .filter(|c| bits[*c as usize / 8] & (1 << (c % 8)) != 0)
        .collect())
}

/// Result of the whole-file check.
#[derive(Debug, PartialEq, Eq)]
pub enum WholeCheck {
    Good,
    /// These chunks no longer match their digests (a disk fault, a change behind our back).
    BadChunks(Vec<u32>),
    /// Every chunk matches but the whole does not: the manifest contradicts itself.
    Inconsistent,
}

/// Hashes the part file; on a mismatch, finds the chunks that no longer match.
pub fn check_whole(part: &Path, manifest: &Manifest) -> io::Result<WholeCheck> {
    let (size, whole, chunks) = hash_file(part, manifest.chunk_size)?;
    if size == manifest.size && whole == manifest.sha256 {
        return Ok(WholeCheck::Good);
    }
    let bad: Vec<u32> = (0..manifest.chunk_count())
        .filter(|&i| chunks.get(i as usize) != manifest.chunks.get(i as usize))
        .collect();
    Ok(if bad.is_empty() {
        WholeCheck::Inconsistent
    } else {
        WholeCheck::BadChunks(bad)
    })
}

/// Moves the finished part file to `received/<from>/<name>`; an existing file of that name is
/// kept and the new one gets the transfer id before its extension.
pub fn move_into_place(layout: &Layout, manifest: &Manifest) -> io::Result<PathBuf> {
    let dir = layout.received().join(manifest.from.as_str());
    fs::create_dir_all(&dir)?;
    let mut target = dir.join(&manifest.name);
    if target.exists() {
        let short = &manifest.id.to_string()[..8];
        let name = match manifest.name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{short}.{ext}"),
            _ => format!("{}.{short}", manifest.name),
        };
        target = dir.join(name);
    }
    let part = layout.part(manifest.id);
    File::open(&part)?.sync_all()?;
    fs::rename(&part, &target)?;
    Ok(target)
}

/// When `path` was last modified, if it can be told.
pub fn modified_ms(path: &Path) -> Option<u64> {
    let t = fs::metadata(path).ok()?.modified().ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// Removes a file if it is there.
pub fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes what a transfer left under `.partial`.
pub fn remove_partial(layout: &Layout, id: TransferId) {
    for p in [layout.part(id), layout.checkpoint(id), layout.have(id)] {
        if let Err(e) = remove_if_there(&p) {
            tracing::warn!(path = %p.display(), "partial file not removed: {e}");
        }
    }
}

/// Bytes available to us on the file system holding `dir`.
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Resolves a path a send request names: it must be a regular file inside `root` (symbolic
/// links resolved first, so one cannot point outside).
pub fn resolve_send_path(root: &Path, path: &Path) -> Result<PathBuf, SendPathError> {
    let root = root
        .canonicalize()
        .map_err(|e| SendPathError::Root(e.to_string()))?;
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    };
    let real = joined.canonicalize().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SendPathError::NotFound,
        _ => SendPathError::Unreadable(e.to_string()),
    })?;
    if !real.starts_with(&root) {
        return Err(SendPathError::Outside);
    }
    let meta = fs::metadata(&real).map_err(|e| SendPathError::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(SendPathError::NotAFile);
    }
    Ok(real)
}

#[derive(Debug, thiserror::Error)]
pub enum SendPathError {
    #[error("the send root is not usable: {0}")]
    Root(String),
    #[error("no such file")]
    NotFound,
    #[error("the path is outside the directory this worker sends from")]
    Outside,
    #[error("not a regular file")]
    NotAFile,
    #[error("cannot read it: {0}")]
    Unreadable(String),
}

/// The name a file is sent under: its last component.
pub fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("out");
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        fs::write(root.join("a.bin"), b"x").expect("write");
        fs::write(dir.path().join("secret"), b"x").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link")).expect("link");
        assert!(resolve_send_path(&root, Path::new("a.bin")).is_ok());
        assert!(resolve_send_path(&root, &root.join("a.bin")).is_ok());
        for (p, want) in [
            ("../secret", "outside"),
            ("link", "outside"),
            ("sub", "not a file"),
            ("nope", "missing"),
        ] {
            let got = resolve_send_path(&root, Path::new(p));
            let ok = matches!(
                (&got, want),
                (Err(SendPathError::Outside), "outside")
                    | (Err(SendPathError::NotAFile), "not a file")
                    | (Err(SendPathError::NotFound), "missing")
            );
            assert!(ok, "{p}: {got:?}");
        }
    }

    /// A manifest of the file at `p`, in 1 MiB chunks.
    fn manifest_of(p: &Path) -> Manifest {
        manifest_in(p, 1 << 20)
    }

    fn manifest_in(p: &Path, chunk_size: u32) -> Manifest {
        let (size, sha256, chunks) = hash_file(p, chunk_size).expect("hash");
        Manifest {
            id: TransferId([3; 16]),
            from: "a".parse().expect("id"),
            to: "b".parse().expect("id"),
            name: "f".into(),
            size,
            chunk_size,
            sha256,
            chunks,
            ts: 0,
            sig: String::new(),
            kid: None,
        }
    }

    /// A piece message's chunk, offset and data.
    fn unpack(piece: &[u8]) -> (u32, usize, &[u8]) {
        let mesh_types::transfer::Frame::Piece(p) =
            mesh_types::transfer::Frame::decode(piece).expect("frame")
        else {
            panic!("a piece")
        };
        (p.chunk, p.offset as usize, p.data)
    }

    #[test]
    fn a_large_chunk_is_read_in_batches_of_whole_pieces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 241) as u8).collect();
        fs::write(&p, &data).expect("write");
        let manifest = manifest_in(&p, 4 << 20);
        let f = File::open(&p).expect("open");
        let (mut back, mut offset, mut reads) = (Vec::new(), 0u32, 0);
        while (offset as usize) < data.len() {
            let pieces = read_pieces(&f, &manifest, 0, offset)
                .expect("read")
                .expect("all there");
            reads += 1;
            for piece in &pieces {
                let (chunk, at, data) = unpack(piece);
                assert_eq!((chunk, at), (0, back.len()));
                back.extend_from_slice(data);
            }
            offset += u32::try_from(pieces.iter().map(|p| p.len() - PIECE_HEADER).sum::<usize>())
                .expect("small");
        }
        assert_eq!(back, data);
        assert_eq!(
            reads,
            data.len().div_ceil(READ_BATCH),
            "at most a batch a read"
        );
        assert!(chunk_matches(&f, &manifest, 0).expect("read"));
    }

    #[test]
    fn pieces_carry_the_chunk_and_a_check_finds_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(1 << 20) + 100_000).map(|i| (i % 249) as u8).collect();
        fs::write(&p, &data).expect("write");
        let manifest = manifest_of(&p);
        let f = File::open(&p).expect("open");
        assert!(chunk_matches(&f, &manifest, 1).expect("read"));
        // Each chunk in one batch (the smallest chunk is one).
        let mut back = Vec::new();
        for (chunk, offset) in [(0, 0), (1, 0)] {
            let pieces = read_pieces(&f, &manifest, chunk, offset)
                .expect("read")
                .expect("all there");
            for piece in &pieces {
                let (chunk, at, data) = unpack(piece);
                assert_eq!(
                    chunk as usize * (1 << 20) + at,
                    back.len(),
                    "in order, at their place"
                );
                back.extend_from_slice(data);
            }
        }
        assert_eq!(back, data);
        let mut changed = data.clone();
        changed[(1 << 20) + 5] ^= 1;
        fs::write(&p, &changed).expect("write");
        let f = File::open(&p).expect("open");
        assert!(!chunk_matches(&f, &manifest, 1).expect("read"), "changed");
        assert!(chunk_matches(&f, &manifest, 0).expect("read"), "unchanged");
        fs::write(&p, &data[..100]).expect("truncate");
        let f = File::open(&p).expect("open");
        assert_eq!(
            read_pieces(&f, &manifest, 1, 0).expect("read"),
            None,
            "shorter"
        );
        assert!(!chunk_matches(&f, &manifest, 1).expect("read"), "shorter");
    }

    #[test]
    fn the_writer_checks_each_chunk_and_follows_the_whole_file_while_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..(5 << 19) + 777).map(|i| (i % 253) as u8).collect();
        fs::write(&src, &data).expect("write");
        let manifest = std::sync::Arc::new(manifest_of(&src));
        let chunk = |i: usize| &data[(i << 20)..((i + 1) << 20).min(data.len())];
        // Feeds chunk `i` (`bad`: with a byte flipped) in 64 KiB pieces.
        let feed = |w: &mut ChunkWriter, i: usize, bad: bool| {
            let mut bytes = chunk(i).to_vec();
            if bad {
                bytes[9] ^= 1;
            }
            let mut result = None;
            for (k, piece) in bytes.chunks(65536).enumerate() {
                let last = (k + 1) * 65536 >= bytes.len();
                let r = w
                    .piece(i as u32, (k * 65536) as u32, piece, last)
                    .expect("written");
                assert_eq!(r.is_some(), last);
                result = r;
            }
            result.expect("a result at the last piece")
        };
        let check = |chunk: u32, good: bool, whole: Option<Digest>| Checked { chunk, good, whole };

        let writer = |name: &str| {
            let part = dir.path().join(name);
            let file = std::sync::Arc::new(File::create(&part).expect("part"));
            (ChunkWriter::new(file, manifest.clone()), part)
        };

        // In order: the whole file's digest comes with the last chunk.
        let (mut w, part) = writer("in-order.part");
        assert_eq!(feed(&mut w, 0, false), check(0, true, None));
        assert_eq!(feed(&mut w, 1, false), check(1, true, None));
        let all = Some(manifest.sha256);
        assert_eq!(feed(&mut w, 2, false), check(2, true, all));
        assert_eq!(fs::read(&part).expect("read"), data);

        // A bad chunk is reported and, sent again, written over; after it the order is broken
        // and the whole-file check is left to read the file.
        let (mut w, part) = writer("repaired.part");
        assert_eq!(feed(&mut w, 0, false), check(0, true, None));
        assert_eq!(feed(&mut w, 1, true), check(1, false, None));
        assert_eq!(feed(&mut w, 2, false), check(2, true, None));
        assert_eq!(feed(&mut w, 1, false), check(1, true, None));
        assert_eq!(fs::read(&part).expect("read"), data);
        assert_eq!(
            check_whole(&part, &manifest).expect("checked"),
            WholeCheck::Good
        );

        // A piece that does not follow its chunk's first is not written; its chunk fails.
        let (mut w, part) = writer("stray.part");
        assert_eq!(w.piece(1, 65536, &[1; 10], false).expect("ignored"), None);
        assert_eq!(
            w.piece(1, 65546, &[1; 10], true).expect("ignored"),
            Some(check(1, false, None))
        );
        assert_eq!(
            fs::metadata(&part).expect("part").len(),
            0,
            "nothing written"
        );
    }

    #[test]
    fn the_have_bitmap_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.have");
        assert_eq!(read_have(&p).expect("none"), Vec::<u32>::new());
        write_have(&p, &[0, 3, 9, 511]).expect("write");
        assert_eq!(read_have(&p).expect("read"), vec![0, 3, 9, 511]);
        // Only grows while a transfer runs; a shorter map leaves no stale bits behind it in
        // the bytes it covers.
        write_have(&p, &[0, 3, 9, 10, 511]).expect("write");
        assert_eq!(read_have(&p).expect("read"), vec![0, 3, 9, 10, 511]);
    }

    #[test]
    fn hashing_matches_chunk_by_chunk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 7).map(|i| (i % 251) as u8).collect();
        fs::write(&p, &data).expect("write");
        let (size, whole, chunks) = hash_file(&p, 1 << 20).expect("hash");
        assert_eq!(size, data.len() as u64);
        assert_eq!(whole, Digest::of(&data));
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[3], Digest::of(&data[3 << 20..]));
        // A file of whole chunks has no empty last chunk; an empty file has no chunk.
        fs::write(&p, &data[..2 << 20]).expect("write");
        let (size, whole, chunks) = hash_file(&p, 1 << 20).expect("hash");
        assert_eq!((size, whole), (2 << 20, Digest::of(&data[..2 << 20])));
        assert_eq!(
            chunks,
            vec![
                Digest::of(&data[..1 << 20]),
                Digest::of(&data[1 << 20..2 << 20])
            ]
        );
        fs::write(&p, b"").expect("write");
        assert_eq!(
            hash_file(&p, 1 << 20).expect("hash"),
            (0, Digest::of(b""), vec![])
        );
    }
}
