//! Reading a log back: verifying a directory's chain against the head
//! file and the audit key, recognising a torn tail (a write cut short by a
//! power loss) and setting it aside, and loading the audit key's public
//! half. Used at start-up and by `ron-kms audit verify`.
use super::*;

/// Verify an audit dir against the public key stored beside it.
pub fn verify_dir(dir: &Path, key: Option<&[u8]>) -> Result<chain::Summary, String> {
    let key = match key {
        Some(k) => k.to_vec(),
        None => read_key_file(&dir.join(KEY_FILE))?,
    };
    // The head first: the writer renames it into place only after the
    // records it names are durable, so on a live log the segments read
    // after it hold at least those records.
    let head = std::fs::read_to_string(dir.join(HEAD_FILE));
    let files = chain::segments(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let s = chain::verify_files(&files, &key).map_err(|e| e.to_string())?;
    check_head(dir, head, s)
}

/// The records the log holds must reach the head sealed at the last
/// checkpoint (`audit.head`), and end in the same record when they end there.
pub(super) fn check_head(
    dir: &Path,
    head: std::io::Result<String>,
    s: chain::Summary,
) -> Result<chain::Summary, String> {
    if let Ok(head) = head {
        let mut parts = head.split_whitespace();
        let seq: u64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let hash = parts.next().unwrap_or("");
        if seq > s.last_seq {
            return Err(format!(
                "{}: the log ends at record {} but was sealed up to record {seq}: records were removed from the end",
                dir.display(),
                s.last_seq
            ));
        }
        if seq > 0 && seq == s.last_seq && hash != hex::encode(s.last_hash) {
            return Err(format!(
                "{}: record {seq} differs from the sealed head",
                dir.display()
            ));
        }
    }
    Ok(s)
}

/// A write a crash tore: the last segment ends in an incomplete line.
pub(super) struct TornTail {
    pub(super) segment: PathBuf,
    /// Bytes of the segment that hold complete lines.
    pub(super) keep: usize,
    pub(super) torn: Vec<u8>,
}

/// Device sectors are at least this large: a write that a power cut tore
/// leaves whole sectors unwritten, so the zeros it leaves inside a commit
/// start and end on this grain (or where the commit started).
pub(super) const SECTOR: usize = 512;

/// Where the torn write in a segment's records begins, if they end in one:
/// the start of the first line holding a NUL byte, or else of an incomplete
/// last line. A record never holds a NUL (JSON escapes it), so a NUL there
/// means bytes that were never written: the zero tail shows through where a
/// crash persisted the commit's sectors out of order. Each run of NULs must
/// start where that line starts or on a sector boundary, and end on one;
/// NULs anywhere else are damage, not a torn write.
pub(super) fn torn_start(content: &[u8]) -> Option<usize> {
    let line_start = |at: usize| {
        content[..at]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
    };
    let keep = match content.iter().position(|b| *b == 0) {
        Some(nul) => line_start(nul),
        None if content.is_empty() || content.ends_with(b"\n") => return None,
        None => line_start(content.len()),
    };
    let mut at = keep;
    while let Some(off) = content[at..].iter().position(|b| *b == 0) {
        let start = at + off;
        let len = content[start..].iter().position(|b| *b != 0)?;
        let end = start + len;
        if (start != keep && start % SECTOR != 0) || end % SECTOR != 0 {
            return None;
        }
        at = end;
    }
    Some(keep)
}

/// Whether the log fails verification only because a crash tore its last
/// commit: a power cut (or kernel crash) in the middle of a commit can leave
/// part of a batch on disk — a prefix (the last line incomplete), or, when
/// the device persisted the batch's sectors out of order, a mix of its bytes
/// and the zeros they were to overwrite ([`torn_start`]). No caller was
/// answered for any record of that batch (answers wait for its fdatasync,
/// and a batch is written only after the one before it is durable), so the
/// torn bytes are an unacknowledged write, not lost records. Everything
/// before them must verify and reach the sealed head, or this is not a torn
/// write and the log stays broken. A complete line that fails (a flipped
/// byte), a missing record or a cut into sealed records is never taken for a
/// torn write.
pub(super) fn torn_tail(dir: &Path, key: &[u8]) -> Option<(TornTail, chain::Summary)> {
    let head = std::fs::read_to_string(dir.join(HEAD_FILE));
    let files = chain::segments(dir).ok()?;
    let (last, earlier) = files.split_last()?;
    let bytes = std::fs::read(last).ok()?;
    let content = chain::content(&bytes);
    let keep = torn_start(content)?;
    let mut s = chain::verify_files(earlier, key).ok()?;
    chain::verify_bytes(&last.display().to_string(), &content[..keep], key, &mut s).ok()?;
    let s = check_head(dir, head, s).ok()?;
    Some((
        TornTail {
            segment: last.clone(),
            keep,
            torn: content[keep..].to_vec(),
        },
        s,
    ))
}

/// Move a torn tail out of the segment: its bytes go to
/// `audit-NNNNNNNN.torn-<unix ms>` beside it (owner-only, kept for the
/// operator; `audit verify` does not read it), and the segment is cut back
/// to its last complete line.
pub(super) fn set_aside(dir: &Path, t: &TornTail) -> Result<PathBuf, String> {
    let stem = t
        .segment
        .file_stem()
        .and_then(|n| n.to_str())
        .unwrap_or("audit");
    let aside = dir.join(format!("{stem}.torn-{}", now_ms()));
    crate::secret_file::write_private(&aside, &t.torn).map_err(|e| e.to_string())?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&t.segment)
        .map_err(|e| format!("{}: {e}", t.segment.display()))?;
    f.set_len(t.keep as u64).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(aside)
}

/// [`verify_dir`] for an operator: when the log fails only because a crash
/// tore its last commit, the error says so and what the next start does.
pub fn verify_dir_explained(dir: &Path, key: Option<&[u8]>) -> Result<chain::Summary, String> {
    verify_dir(dir, key).map_err(|e| {
        let key = match key {
            Some(k) => k.to_vec(),
            None => match read_key_file(&dir.join(KEY_FILE)) {
                Ok(k) => k,
                Err(_) => return e,
            },
        };
        match torn_tail(dir, &key) {
            Some((t, s)) => format!(
                "{e}\n  a torn write: the last {} bytes of {} are a commit a crash interrupted (never acknowledged to any caller); the {} records before them verify. The next start sets those bytes aside and seals the log.",
                t.torn.len(),
                t.segment.display(),
                s.records
            ),
            None => e,
        }
    })
}

/// `audit-key.pub`: the raw Ed25519 public key in hex.
pub fn read_key_file(p: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    hex::decode(text.trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| format!("{}: not a hex Ed25519 public key", p.display()))
}
