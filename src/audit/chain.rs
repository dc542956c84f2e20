//! The audit log's on-disk format and its verifier: pure functions, no I/O
//! beyond reading the files handed to [`verify_files`].
//!
//! One record per line (JSON), in files `audit-NNNNNNNN.log` read in name
//! order. Every line ends with `,"hash":"<64 hex>"}` where
//! `hash = SHA-256(prev_hash || body)`, `body` being the line up to (not
//! including) `,"hash":"`, and `prev_hash` the previous line's hash (32 zero
//! bytes before the first record). Each body carries `seq` (1, 2, 3, … with
//! no gaps) and `prev` (the previous hash in hex), so deleting, inserting,
//! reordering or editing a line breaks the chain at that line.
//!
//! A checkpoint is a record with `"op":"checkpoint"` and a `sig`: an Ed25519
//! signature by the service's audit key over
//! `"ron-kms audit checkpoint v1" || 0x00 || seq (u64 BE) || prev_hash`, i.e.
//! over the head of the chain before it. The writer emits one every
//! `KMS_AUDIT_CHECKPOINT_INTERVAL` records, at least once a second while
//! records arrive, and on clean shutdown. A log whose last line is not a
//! checkpoint has an unsealed tail: after a crash that is expected (start-up
//! seals it), anywhere else it means the tail may have been cut off.
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::crypto::sha256;

pub const CHECKPOINT_DOMAIN: &[u8] = b"ron-kms audit checkpoint v1\0";
const HASH_MARK: &str = ",\"hash\":\"";

/// The fields of one record, in line order. `hash` is appended separately.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Body {
    pub seq: u64,
    pub ts_ms: i64,
    /// The replica that wrote the record (`KMS_NODE_ID`). Each replica keeps
    /// its own chain; records before this field existed have none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    pub op: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub principal: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// Records written before input hashes were keyed: the unkeyed SHA-256
    /// of the input. Read, never written.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input_sha256: String,
    /// HMAC-SHA256 of the operation's input (message, plaintext, …) under
    /// the node's audit input key, never the input itself
    /// ([`super::InputKey`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input_hmac: String,
    /// A mutation's outcome: the `seq` of its intent record (docs/audit.md,
    /// "Intents and outcomes").
    #[serde(default, skip_serializing_if = "is_zero")]
    pub intent: u64,
    /// Checkpoints only: base64 Ed25519 signature.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sig: String,
    pub prev: String,
}

/// A record's fields, borrowed: what the writer encodes without building a
/// [`Body`] and its strings. The same field names, order and omissions as
/// [`Body`], so the same bytes (a test holds the two to that).
#[derive(Default, Serialize)]
pub struct BodyRef<'a> {
    pub seq: u64,
    pub ts_ms: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub node: &'a str,
    pub op: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub tenant: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub principal: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kid: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub alg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub result: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub input_hmac: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    pub intent: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub sig: &'a str,
    pub prev: &'a str,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Lower-case hex of a 32-byte hash into a caller's buffer (no allocation);
/// the returned `str` borrows `out`.
pub fn hex32_in<'a>(bytes: &[u8; 32], out: &'a mut [u8; 64]) -> &'a str {
    hex::encode_to_slice(bytes, out).expect("64 bytes hold 32 in hex");
    std::str::from_utf8(out).expect("hex is ASCII")
}

/// The message a checkpoint signs.
pub fn checkpoint_message(seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    [CHECKPOINT_DOMAIN, &seq.to_be_bytes(), prev].concat()
}

/// Lower-case hex of a 32-byte hash, without `hex::encode`'s char-by-char
/// `String` building (it showed in the writer's profile).
pub fn hex32(bytes: &[u8; 32]) -> String {
    hex32_in(bytes, &mut [0u8; 64]).to_string()
}

/// Encode `body` (a [`Body`] or [`BodyRef`] whose `prev` must already be
/// set) as one line, without the newline, appended to `out` (no intermediate
/// strings: records are encoded straight into the pending batch); returns
/// the line's hash.
pub fn encode_into<B: Serialize>(body: &B, prev: &[u8; 32], out: &mut Vec<u8>) -> [u8; 32] {
    let start = out.len();
    serde_json::to_writer(&mut *out, body).expect("audit body serialises");
    out.pop(); // drop the closing brace
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev);
    ctx.update(&out[start..]);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(ctx.finish().as_ref());
    out.extend_from_slice(HASH_MARK.as_bytes());
    let mut hex = [0u8; 64];
    hex::encode_to_slice(hash, &mut hex).expect("64 bytes hold 32 in hex");
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\"}");
    hash
}

/// Where and why verification failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: record {seq}: {reason}")]
pub struct ChainError {
    pub file: String,
    pub line: usize,
    /// The sequence number expected at that line.
    pub seq: u64,
    pub reason: String,
}

/// What a successful verification saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub checkpoints: u64,
    pub last_seq: u64,
    pub last_hash: [u8; 32],
    /// Records after the last checkpoint (0 for a sealed log).
    pub unsealed_tail: u64,
    /// The node ids the records name (one for a replica's chain).
    pub nodes: std::collections::BTreeSet<String>,
    /// Intent records no outcome record names (by `seq`): mutations whose
    /// outcome the log does not know, because the process died between
    /// the intent and the outcome (or the mutation is still running).
    pub dangling_intents: std::collections::BTreeMap<u64, Intent>,
}

/// What an intent record says is about to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    pub op: String,
    pub tenant: String,
    pub principal: String,
    pub kid: String,
    pub request_id: String,
    pub ts_ms: i64,
}

/// The `result` of an intent record.
pub const INTENT: &str = "intent";

/// The segment files of an audit dir, in order.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".log"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Verify a chain spread over `files` (in order). `audit_key` is the raw
/// 32-byte Ed25519 public key checkpoints must verify under.
pub fn verify_files(files: &[PathBuf], audit_key: &[u8]) -> Result<Summary, ChainError> {
    let mut s = Summary::default();
    for f in files {
        let name = f.display().to_string();
        let text = std::fs::read(f).map_err(|e| ChainError {
            file: name.clone(),
            line: 0,
            seq: s.last_seq + 1,
            reason: format!("cannot read: {e}"),
        })?;
        verify_bytes(&name, &text, audit_key, &mut s)?;
    }
    Ok(s)
}

/// A segment's records: its bytes without the zero tail the writer keeps
/// ahead of them in the active segment (docs/audit.md, "Where it lives").
pub fn content(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Verify one segment's bytes, continuing the chain state in `s`.
pub fn verify_bytes(
    file: &str,
    text: &[u8],
    audit_key: &[u8],
    s: &mut Summary,
) -> Result<(), ChainError> {
    let fail = |line: usize, seq: u64, reason: String| ChainError {
        file: file.to_string(),
        line,
        seq,
        reason,
    };
    let text = content(text);
    if !text.is_empty() && !text.ends_with(b"\n") {
        let line = text.iter().filter(|b| **b == b'\n').count() + 1;
        return Err(fail(
            line,
            s.last_seq + 1,
            "truncated line at end of file".into(),
        ));
    }
    for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
        if raw.is_empty() {
            continue;
        }
        let line_no = i + 1;
        let expect = s.last_seq + 1;
        let line =
            std::str::from_utf8(raw).map_err(|_| fail(line_no, expect, "not UTF-8".into()))?;
        let at = line
            .rfind(HASH_MARK)
            .ok_or_else(|| fail(line_no, expect, "no hash field".into()))?;
        let head = &line[..at];
        let stated = line[at + HASH_MARK.len()..]
            .strip_suffix("\"}")
            .and_then(|h| hex::decode(h).ok())
            .filter(|h| h.len() == 32)
            .ok_or_else(|| fail(line_no, expect, "malformed hash field".into()))?;
        let computed = sha256(&[s.last_hash.as_slice(), head.as_bytes()].concat());
        let body: Body = serde_json::from_str(&format!("{head}}}"))
            .map_err(|e| fail(line_no, expect, format!("malformed record: {e}")))?;
        if body.seq != expect {
            return Err(fail(
                line_no,
                expect,
                format!(
                    "found sequence {} (records missing, reordered or inserted)",
                    body.seq
                ),
            ));
        }
        if body.prev != hex32(&s.last_hash) {
            return Err(fail(
                line_no,
                expect,
                "prev does not match the previous record's hash".into(),
            ));
        }
        if computed.as_slice() != stated.as_slice() {
            return Err(fail(
                line_no,
                expect,
                "hash does not match the record (edited)".into(),
            ));
        }
        if body.op == "checkpoint" {
            let sig = base64::engine::general_purpose::STANDARD
                .decode(&body.sig)
                .map_err(|_| fail(line_no, expect, "checkpoint signature is not base64".into()))?;
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, audit_key)
                .verify(&checkpoint_message(body.seq, &s.last_hash), &sig)
                .map_err(|_| {
                    fail(
                        line_no,
                        expect,
                        "checkpoint signature does not verify under the audit key".into(),
                    )
                })?;
            s.checkpoints += 1;
            s.unsealed_tail = 0;
        } else {
            s.unsealed_tail += 1;
        }
        if body.result == INTENT {
            s.dangling_intents.insert(
                body.seq,
                Intent {
                    op: body.op.clone(),
                    tenant: body.tenant.clone(),
                    principal: body.principal.clone(),
                    kid: body.kid.clone(),
                    request_id: body.request_id.clone(),
                    ts_ms: body.ts_ms,
                },
            );
        } else if body.intent != 0 && s.dangling_intents.remove(&body.intent).is_none() {
            return Err(fail(
                line_no,
                expect,
                format!(
                    "an outcome of intent {}, which is no open intent",
                    body.intent
                ),
            ));
        }
        if !body.node.is_empty() && !s.nodes.contains(&body.node) {
            s.nodes.insert(body.node);
        }
        s.records += 1;
        s.last_seq = body.seq;
        s.last_hash = computed;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_into_appends_the_line_and_chains_its_hash() {
        let body = Body {
            seq: 7,
            ts_ms: 1,
            op: "sign".into(),
            tenant: "t\"quoted".into(),
            prev: hex32(&[3u8; 32]),
            ..Body::default()
        };
        let mut out = b"earlier\n".to_vec();
        let hash = encode_into(&body, &[3u8; 32], &mut out);
        let line = std::str::from_utf8(&out[8..]).unwrap();
        let (head, tail) = line.split_once(HASH_MARK).unwrap();
        assert_eq!(
            hash,
            sha256(&[[3u8; 32].as_slice(), head.as_bytes()].concat())
        );
        assert_eq!(tail, format!("{}\"}}", hex::encode(hash)));
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(parsed["tenant"], "t\"quoted");
        assert_eq!(hex32(&[0xab; 32]), "ab".repeat(32));
    }

    #[test]
    fn a_borrowed_body_encodes_to_the_same_bytes_as_a_body() {
        let full = Body {
            seq: 42,
            ts_ms: 1_764_000_000_123,
            node: "node-1".into(),
            op: "sign".into(),
            tenant: "t\"q\\\u{1}é".into(),
            principal: "token:0123456789ab".into(),
            kid: "k#v1".into(),
            alg: "ed25519".into(),
            result: "ok".into(),
            reason: "line\nbreak".into(),
            request_id: "rid".into(),
            input_sha256: String::new(),
            input_hmac: hex32(&[5u8; 32]),
            intent: 41,
            sig: "c2ln".into(),
            prev: hex32(&[3u8; 32]),
        };
        let sparse = Body {
            seq: 1,
            op: "authenticate".into(),
            prev: hex32(&[0u8; 32]),
            ..Body::default()
        };
        for b in [full, sparse] {
            let r = BodyRef {
                seq: b.seq,
                ts_ms: b.ts_ms,
                node: &b.node,
                op: &b.op,
                tenant: &b.tenant,
                principal: &b.principal,
                kid: &b.kid,
                alg: &b.alg,
                result: &b.result,
                reason: &b.reason,
                request_id: &b.request_id,
                input_hmac: &b.input_hmac,
                intent: b.intent,
                sig: &b.sig,
                prev: &b.prev,
            };
            let (mut a, mut c) = (Vec::new(), Vec::new());
            let prev = [3u8; 32];
            assert_eq!(
                encode_into(&b, &prev, &mut a),
                encode_into(&r, &prev, &mut c)
            );
            assert_eq!(a, c);
        }
    }
}
