//! The audit log: every operation leaves a hash-chained record (hashes of
//! inputs, never inputs); `ron-kms audit verify` and start-up both detect a
//! flipped byte, a deleted record, a truncated tail and two reordered
//! records; a broken chain refuses writes but keeps verify; kill -9 loses no
//! acknowledged operation's record.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{self, audit_verify, serve};
use common::{Front, TestServer, FRONTS};
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::SignRequest;
use tonic::Code;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    // a data dir open to others is refused at start
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            copy_dir(&p, &to.join(p.file_name().unwrap()));
        } else {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

fn segment(dir: &Path) -> PathBuf {
    let segs = ron_kms::audit::chain::segments(dir).unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs[0].clone()
}

/// A mixed run over both fronts; returns the server (stopped) and the
/// message whose bytes must not appear in the log.
async fn mixed_run() -> (TestServer, Vec<u8>, String) {
    let mut srv = TestServer::start().await;
    let secret_msg = b"PAYLOAD-THAT-MUST-NOT-BE-LOGGED".to_vec();
    let reader = srv.token("admin", "kms:verify");
    for front in FRONTS {
        let mut c = srv.client(front, &srv.admin_token).await;
        let s = format!("s-{front:?}").to_lowercase();
        let w = format!("w-{front:?}").to_lowercase();
        c.create(&s, "ml-dsa-44").await.unwrap();
        c.create(&w, "ml-kem-768").await.unwrap();
        for i in 0..60 {
            let sig = c.sign(&s, &secret_msg).await.unwrap();
            assert!(
                c.verify(&sig.kid, &secret_msg, &sig.signature)
                    .await
                    .unwrap()
                    .valid
            );
            let ct = c.wrap(&w, &secret_msg, b"").await.unwrap().ciphertext;
            c.unwrap("", &ct, b"").await.unwrap();
            if i % 20 == 0 {
                c.rotate(&s, "").await.unwrap();
            }
        }
        let mut r = srv.client(front, &reader).await;
        r.sign(&s, b"x").await.unwrap_err().expect(
            403,
            Code::PermissionDenied,
            "permission_denied",
        );
        c.sign("missing", b"x")
            .await
            .unwrap_err()
            .expect(404, Code::NotFound, "not_found");
        // refused at authentication: a revoked-looking token, then no token
        for token in ["rkms_not-a-real-token", ""] {
            let mut anon = srv.client(front, token).await;
            anon.sign(&s, b"x").await.unwrap_err().expect(
                401,
                Code::Unauthenticated,
                "unauthenticated",
            );
        }
    }
    let keyed = srv
        .client(Front::Http, &srv.admin_token)
        .await
        .input_hmac(&secret_msg)
        .await;
    srv.stop().await;
    (srv, secret_msg, keyed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_run_leaves_a_verified_chain_of_hashed_records() {
    let (srv, secret, keyed) = mixed_run().await;
    let dir = srv.data_dir().join("audit");
    let (ok, text) = audit_verify(&dir);
    assert!(ok, "{text}");
    assert!(text.contains("audit chain ok"), "{text}");
    let log = std::fs::read_to_string(segment(&dir)).unwrap();
    // 2 fronts × (2 creates + 60 × 4 ops + 3 rotations + 4 refusals), an
    // intent before each create and rotation, one HashAuditInput, plus
    // checkpoints; the 4 refused authentications are 2 records (below)
    let ops = log
        .lines()
        .filter(|l| !l.contains("\"op\":\"checkpoint\""))
        .count();
    assert_eq!(
        ops,
        2 * (2 + 240 + 3 + 4) + 2 * (2 + 3) + 1 - 2,
        "one record per operation, and an intent per change"
    );
    let intents = log
        .lines()
        .filter(|l| l.contains("\"result\":\"intent\""))
        .count();
    assert_eq!(intents, 10);
    assert!(text.contains("audit chain ok") && !text.contains("without an outcome"));
    assert!(
        log.lines()
            .last()
            .unwrap()
            .contains("\"op\":\"checkpoint\""),
        "sealed on shutdown"
    );
    assert!(
        log.contains(&format!("\"input_hmac\":\"{keyed}\"")),
        "keyed input hashes are recorded"
    );
    let hash = hex::encode(ron_kms::crypto::sha256(&secret));
    assert!(
        !log.contains(&hash),
        "no unkeyed hash of an input is recorded"
    );
    assert!(!log.contains("input_sha256"));
    let wraps: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"op\":\"wrap\"") && l.contains("\"result\":\"ok\""))
        .collect();
    assert_eq!(wraps.len(), 120, "{wraps:?}");
    assert!(
        wraps.iter().all(|l| l.contains(&keyed)),
        "a wrap's record carries the keyed hash of its plaintext"
    );
    assert!(!log.contains("PAYLOAD"), "inputs are never recorded");
    let refused = log
        .lines()
        .find(|l| l.contains("\"result\":\"permission_denied\""))
        .expect("refusals are audited");
    assert!(
        refused.contains("\"op\":\"sign\"") && refused.contains("\"tenant\":\"admin\""),
        "{refused}"
    );
    assert!(log.contains("\"result\":\"not_found\""));
    let token_hash = &hex::encode(ron_kms::crypto::sha256(b"rkms_not-a-real-token"))[..16];
    let unauth: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"result\":\"unauthenticated\""))
        .collect();
    // four refusals from one address: the first recorded at once, the
    // other three in one aggregate record with their count
    assert_eq!(unauth.len(), 2, "{unauth:?}");
    assert!(unauth.iter().all(|l| l.contains("\"op\":\"authenticate\"")));
    assert!(
        unauth[0].contains(&format!("\"principal\":\"token:{token_hash}\"")),
        "a presented token is identified by its hash prefix: {}",
        unauth[0]
    );
    assert!(
        unauth[1].contains("aggregate count=3 shed=0 source=127.0.0.1")
            && unauth[1].contains(&format!("token:{token_hash}×1"))
            && unauth[1].contains("anonymous×2"),
        "{}",
        unauth[1]
    );
    assert!(
        !log.contains("not-a-real-token"),
        "tokens are never recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_detected_by_verify_and_at_start_up() {
    let (srv, _, _) = mixed_run().await;
    let data = srv.data_dir();
    let lines: Vec<String> = std::fs::read_to_string(segment(&data.join("audit")))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let n = lines.len();
    assert!(n > 100);
    let join = |ls: &[String]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();

    let mut flipped = lines.clone();
    flipped[50] = flipped[50].replacen("\"ts_ms\":1", "\"ts_ms\":2", 1);
    assert_ne!(flipped[50], lines[50]);
    let mut deleted = lines.clone();
    deleted.remove(50);
    let truncated = lines[..n - 3].to_vec();
    let mut reordered = lines.clone();
    reordered.swap(50, 51);

    for (name, content) in [
        ("flipped byte", join(&flipped)),
        ("deleted record", join(&deleted)),
        ("truncated tail", join(&truncated)),
        ("reordered records", join(&reordered)),
        (
            "cut mid-line",
            join(&lines)[..join(&lines).len() - 10].to_string(),
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        let copy = root.path().join("data");
        copy_dir(&data, &copy);
        std::fs::write(segment(&copy.join("audit")), content).unwrap();
        let (ok, text) = audit_verify(&copy.join("audit"));
        assert!(!ok, "{name}: verify must fail: {text}");
        assert!(text.contains("audit chain broken"), "{name}: {text}");

        // start-up: not ready, writes refused, verify still answers
        let r = ron_kms::server::start(&common::config(&copy))
            .await
            .unwrap();
        assert!(r.kms.audit().integrity().is_err(), "{name}");
        assert!(r.kms.audit().integrity_failures() >= 1);
        let mut c = common::Client::connect(Front::Http, &r, &srv.admin_token).await;
        let (status, body) = c.http_raw(reqwest::Method::GET, "/readyz", vec![]).await;
        assert_eq!(status, 503, "{name}: {body}");
        assert!(
            body["checks"]["audit"]
                .as_str()
                .unwrap()
                .starts_with("error"),
            "{body}"
        );
        c.sign("s-grpc", b"m").await.unwrap_err().expect(
            409,
            Code::FailedPrecondition,
            "failed_precondition",
        );
        c.create("new", "ed25519").await.unwrap_err().expect(
            409,
            Code::FailedPrecondition,
            "failed_precondition",
        );
        let k = c.get_key("s-grpc", false).await.unwrap();
        let v = c
            .verify(
                &format!("s-grpc#v{}", k.primary_version),
                b"m",
                b"not a signature",
            )
            .await
            .unwrap();
        assert!(!v.valid, "verify stays available");
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_record() {
    kill_9_under_load(&[]).await;
}

/// `KMS_AUDIT_SYNC=write` answers once a record is written to the kernel:
/// a kill -9 of the process loses none of those either (the kernel still
/// has them; only a power cut could).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_record_with_audit_sync_write() {
    kill_9_under_load(&[
        ("KMS_AUDIT_SYNC", "write"),
        ("KMS_AUDIT_SYNC_INTERVAL_MS", "1000"),
    ])
    .await;
}

async fn kill_9_under_load(env: &[(&str, &str)]) {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let envs: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    let s = process::serve_with(&["--data-dir".as_ref(), data.as_os_str()], &envs, None);
    let token = s.token.clone().unwrap();
    let mut c = KmsClient::connect(s.grpc.clone()).await.unwrap();
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let mut req = tonic::Request::new(ron_kms::proto::CreateKeyRequest {
        name: "k".into(),
        algorithm: "ed25519".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", auth.clone());
    c.create_key(req).await.unwrap();

    // sign from 8 concurrent clients; kill -9 while they run
    let pid = s.child.id();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = c.clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000 {
                let mut r = tonic::Request::new(SignRequest {
                    context: Vec::new(),
                    key: "k".into(),
                    message: format!("{t}-{i}").into_bytes(),
                    op_id: String::new(),
                    ..Default::default()
                });
                r.metadata_mut().insert("authorization", auth.clone());
                match c.sign(r).await {
                    Ok(resp) => acked.push(
                        resp.metadata()
                            .get("x-request-id")
                            .unwrap()
                            .to_str()
                            .unwrap()
                            .to_string(),
                    ),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    drop(s);
    eprintln!(
        "{env:?}: {} signs acknowledged before the kill",
        acked.len()
    );
    assert!(
        acked.len() > 50,
        "load ran before the kill ({} acknowledged)",
        acked.len()
    );

    // restart seals the tail; every acknowledged sign has its record
    let s2 = serve(&data);
    drop(s2);
    let (ok, text) = audit_verify(&data.join("audit"));
    assert!(ok, "{text}");
    let log = std::fs::read_to_string(segment(&data.join("audit"))).unwrap();
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !log.contains(&format!("\"request_id\":\"{id}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged signs have no audit record",
        missing.len(),
        acked.len()
    );
}

fn test_log(audit_dir: &Path) -> (ron_kms::audit::Options, Vec<u8>, ron_kms::audit::Signer) {
    use ed25519_dalek::Signer as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let public = key.verifying_key().to_bytes().to_vec();
    let signer: ron_kms::audit::Signer =
        std::sync::Arc::new(move |m: &[u8]| Ok(key.sign(m).to_bytes().to_vec()));
    let opts = ron_kms::audit::Options {
        node: "node-a".into(),
        sink: ron_kms::audit::Sink::Dir(audit_dir.to_path_buf()),
        checkpoint_interval: 5000,
        max_file_bytes: 64 * 1024 * 1024,
        min_free_bytes: 0,
        input_key: ron_kms::audit::InputKey::random(),
        sync: ron_kms::audit::AuditSync::Fsync,
    };
    (opts, public, signer)
}

async fn start_log(audit_dir: &Path) -> std::sync::Arc<ron_kms::audit::AuditLog> {
    let (opts, public, signer) = test_log(audit_dir);
    start_with(opts, &public, signer).await
}

/// `AuditLog::start_blocking` off the runtime's workers, as the server runs it.
async fn start_with(
    opts: ron_kms::audit::Options,
    public: &[u8],
    signer: ron_kms::audit::Signer,
) -> std::sync::Arc<ron_kms::audit::AuditLog> {
    let public = public.to_vec();
    tokio::task::spawn_blocking(move || {
        ron_kms::audit::AuditLog::start_blocking(opts, &public, signer)
    })
    .await
    .unwrap()
    .unwrap()
}

/// The one file of torn bytes the start set aside in `audit_dir`.
fn torn_set_aside(audit_dir: &Path) -> PathBuf {
    let mut aside: Vec<_> = std::fs::read_dir(audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    aside.pop().unwrap()
}

/// The log in `audit_dir` starts healthy, takes 50 more signs (numbered
/// from `from`) and then verifies: what `audit verify` printed.
async fn restarts_and_verifies(audit_dir: &Path, from: usize) -> String {
    let log = start_log(audit_dir).await;
    assert!(log.integrity().is_ok(), "{:?}", log.integrity());
    append_signs(&log, from, 50).await;
    log.close().await;
    let (ok, text) = audit_verify(audit_dir);
    assert!(ok, "{text}");
    text
}

/// The log in `audit_dir` starts, and reports itself broken: `what` is
/// damage, not a torn write to set aside.
async fn stays_broken(audit_dir: &Path, what: &str) {
    let log = start_log(audit_dir).await;
    assert!(log.integrity().is_err(), "{what} stays broken");
}

/// Records that are not checkpoints, from "audit chain ok: N records (C
/// checkpoints), last record N".
fn signed_records(verify_output: &str) -> u64 {
    let nums: Vec<u64> = verify_output
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums.len() >= 2, "{verify_output}");
    nums[0] - nums[1]
}

async fn append_signs(log: &ron_kms::audit::AuditLog, from: usize, n: usize) {
    for i in from..from + n {
        log.append(ron_kms::audit::Event {
            tenant: "t".into(),
            op: "sign",
            kid: "k#v1".into(),
            result: "ok".into(),
            request_id: format!("rid-{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// A log of `n` acknowledged sign records, copied as a crash would leave it
/// (every acknowledged record on disk, the zero-filled stretch ahead of
/// them, no closing checkpoint); the original is closed cleanly.
async fn crashed_log(dir: &Path, n: usize) -> PathBuf {
    let live = dir.join("live");
    let log = start_log(&live).await;
    append_signs(&log, 0, n).await;
    let crashed = dir.join("crashed");
    copy_dir(&live, &crashed);
    log.close().await;
    crashed
}

/// The active segment is zero-filled ahead of its records. What a crash
/// leaves (records, then zeros) verifies; the next start finds the end of
/// the records and writes on from there; a clean close cuts the zeros off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_leaves_a_zero_tail_that_the_next_start_writes_over() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = crashed_log(dir.path(), 100).await;
    let bytes = std::fs::read(segment(&crashed)).unwrap();
    let records = ron_kms::audit::chain::content(&bytes).len();
    assert!(
        bytes.len() >= 1 << 20 && records > 0 && bytes[records..].iter().all(|b| *b == 0),
        "{} bytes of records, then {} bytes that should be zeros",
        records,
        bytes.len() - records
    );
    // the chain verifies; its tail is unsealed (the crash came before a
    // checkpoint), which `audit verify` reports with exit code 1
    let (_, text) = audit_verify(&crashed);
    assert!(text.starts_with("audit chain ok"), "{text}");
    assert_eq!(signed_records(&text), 100, "{text}");

    let log = start_log(&crashed).await;
    append_signs(&log, 100, 50).await;
    log.close().await;
    let bytes = std::fs::read(segment(&crashed)).unwrap();
    assert!(
        !bytes.contains(&0),
        "a cleanly closed segment holds only its records"
    );
    let text = String::from_utf8(bytes).unwrap();
    for i in 0..150 {
        assert_eq!(
            text.matches(&format!("\"request_id\":\"rid-{i}\"")).count(),
            1,
            "rid-{i}"
        );
    }
    let (ok, text) = audit_verify(&crashed);
    assert!(ok, "{text}");
    assert_eq!(signed_records(&text), 150, "{text}");
    // and a byte flipped in the records is still found
    let path = segment(&crashed);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (ok, text) = audit_verify(&crashed);
    assert!(!ok, "{text}");
}

/// A power cut in the middle of a commit can leave a prefix of the batch on
/// disk: the last line is incomplete. No record of that batch was
/// acknowledged, so the next start sets the incomplete line aside (kept in
/// `audit-NNNNNNNN.torn-<ms>`), cuts the segment back to its last complete
/// line, seals the tail and goes on; `audit verify` on the torn files still
/// reports them, and says they are a torn write. An incomplete line cut into sealed records is not a torn
/// write (tampering_is_detected_by_verify_and_at_start_up, "cut mid-line").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_is_set_aside_and_the_next_start_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = crashed_log(dir.path(), 100).await;
    // the torn write: the start of record 101, where the zero tail begins
    let path = segment(&crashed);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = ron_kms::audit::chain::content(&bytes).len();
    let torn = br#"{"seq":101,"ts_ms":1764000000000,"node":"node-a","op":"sign","ten"#;
    bytes[end..end + torn.len()].copy_from_slice(torn);
    std::fs::write(&path, &bytes).unwrap();
    let (ok, text) = audit_verify(&crashed);
    assert!(!ok, "verify reports the torn line: {text}");
    assert!(text.contains("a torn write"), "and names it: {text}");

    let text = restarts_and_verifies(&crashed, 100).await;
    assert_eq!(signed_records(&text), 150, "{text}");
    let aside = torn_set_aside(&crashed);
    assert_eq!(std::fs::read(&aside).unwrap(), torn.to_vec());
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("\"ten\"") && !text.contains("\"ten{"),
        "the torn bytes are gone from the segment"
    );

    // a complete line that fails is never taken for a torn write
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let last = lines.len() - 1;
    lines[last - 1] = lines[last - 1].replacen("rid-1", "rid-9", 1);
    std::fs::write(
        &path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    stays_broken(&crashed, "a flipped byte in a complete line").await;
}

/// A power cut can also persist a commit's sectors out of order: some of the
/// batch's later sectors reach the disk while an earlier one still holds the
/// zeros written ahead of the records. That too is an unacknowledged write
/// (a batch is written only after the one before it is durable, and answered
/// only after its own fdatasync): `audit verify` names it a torn write, and
/// the next start sets the bytes from the first line with a hole onwards
/// aside and goes on. Zeros that do not lie on sector boundaries, or a hole
/// in sealed records, are damage: the log stays broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_torn_out_of_order_is_set_aside_but_odd_zeros_are_not() {
    const SECTOR: usize = 512;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let log = start_log(&live).await;
    append_signs(&log, 0, 100).await;
    let crashed = dir.path().join("crashed");
    copy_dir(&live, &crashed);
    // the batch being committed when the power went
    append_signs(&log, 100, 40).await;
    let later = std::fs::read(segment(&live)).unwrap();
    log.close().await;
    let sealed = dir.path().join("sealed");
    copy_dir(&live, &sealed);

    let path = segment(&crashed);
    let clean = std::fs::read(&path).unwrap();
    let start = ron_kms::audit::chain::content(&clean).len();
    let end = ron_kms::audit::chain::content(&later).len();
    let hole = (start + 1).next_multiple_of(SECTOR);
    assert!(hole + 2 * SECTOR < end, "the batch spans several sectors");
    let torn_with = |zero: std::ops::Range<usize>| {
        let mut bytes = clean.clone();
        bytes[start..end].copy_from_slice(&later[start..end]);
        bytes[zero].fill(0);
        bytes
    };

    // zeros that are no sector: damage, not a torn write
    let odd = torn_with(hole + 7..hole + 10);
    std::fs::write(&path, &odd).unwrap();
    let (ok, text) = audit_verify(&crashed);
    assert!(!ok && !text.contains("torn write"), "{text}");
    stays_broken(&crashed, "a log with odd zeros").await;

    // one whole sector of the batch never written, the ones after it were
    let torn = torn_with(hole..hole + SECTOR);
    std::fs::write(&path, &torn).unwrap();
    let (ok, text) = audit_verify(&crashed);
    assert!(!ok, "{text}");
    assert!(text.contains("a torn write"), "{text}");
    let line_start = later[..hole]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let kept = std::str::from_utf8(&later[start..line_start])
        .unwrap()
        .lines()
        .filter(|l| !l.contains("\"op\":\"checkpoint\""))
        .count() as u64;

    let text = restarts_and_verifies(&crashed, 140).await;
    assert_eq!(signed_records(&text), 100 + kept + 50, "{text}");
    let aside = torn_set_aside(&crashed);
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        torn[line_start..end].to_vec()
    );

    // a whole sector of zeros inside sealed records is damage
    let path = segment(&sealed);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = (bytes.len() / 2).next_multiple_of(SECTOR);
    bytes[at..at + SECTOR].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let (ok, text) = audit_verify(&sealed);
    assert!(!ok && !text.contains("torn write"), "{text}");
    stays_broken(&sealed, "a hole in sealed records").await;
}

/// Segments rotate by size, and the chain runs on across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_rotate_by_size_and_the_chain_spans_them() {
    use ron_kms::audit::Event;
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    let (mut opts, public, signer) = test_log(&audit_dir);
    opts.checkpoint_interval = 50;
    opts.max_file_bytes = 4096;
    let log = start_with(opts, &public, signer).await;
    for i in 0..300 {
        log.append(Event {
            tenant: "t".into(),
            op: "sign",
            kid: format!("k#v{i}"),
            result: "ok".into(),
            ..Event::default()
        })
        .await
        .unwrap();
    }
    log.close().await;
    let segs: Vec<_> = std::fs::read_dir(&audit_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("audit-") && n.ends_with(".log"))
        .collect();
    assert!(
        segs.len() >= 5,
        "300 records of ~200 bytes in 4 KiB segments: {segs:?}"
    );
    for s in &segs {
        let len = std::fs::metadata(audit_dir.join(s)).unwrap().len();
        // a segment is closed once it reaches the limit, so it exceeds it by
        // at most one batch
        assert!(len < 4096 + 64 * 1024, "{s}: {len} bytes");
    }
    let (ok, text) = audit_verify(&audit_dir);
    assert!(ok, "{text}");
    // "audit chain ok: N records (C checkpoints), last record N": every
    // event is there once
    let nums: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 3, "{text}");
    assert_eq!(nums[0] - nums[1], 300, "{text}");
}

/// When the audit key cannot sign (custody away), appends still succeed and
/// stay hash-chained; the checkpoint is written once the key signs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_deferred_while_the_audit_key_cannot_sign() {
    use ed25519_dalek::Signer as _;
    use ron_kms::audit::{verify_dir, Event, Options, Sink};
    use std::sync::atomic::{AtomicBool, Ordering};
    ron_kms::telemetry::init();
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = dir.path().join("audit");
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let public = key.verifying_key().to_bytes().to_vec();
    let custody_up = std::sync::Arc::new(AtomicBool::new(true));
    let up = custody_up.clone();
    let signer: ron_kms::audit::Signer = std::sync::Arc::new(move |m: &[u8]| {
        if up.load(Ordering::SeqCst) {
            Ok(key.sign(m).to_bytes().to_vec())
        } else {
            Err("custody unavailable".into())
        }
    });
    let opts = Options {
        node: "node-a".into(),
        sink: Sink::Dir(audit_dir.clone()),
        checkpoint_interval: 5,
        max_file_bytes: 1 << 20,
        min_free_bytes: 0,
        input_key: ron_kms::audit::InputKey::random(),
        sync: ron_kms::audit::AuditSync::Fsync,
    };
    let log = start_with(opts, &public, signer).await;
    let event = |i: u32| Event {
        tenant: "t".into(),
        op: "verify",
        kid: format!("k#v{i}"),
        result: "ok".into(),
        ..Event::default()
    };
    custody_up.store(false, Ordering::SeqCst);
    for i in 0..20 {
        log.append(event(i))
            .await
            .expect("appends succeed while the audit key cannot sign");
    }
    let s = verify_dir(&audit_dir, Some(&public)).unwrap();
    assert_eq!(s.checkpoints, 0, "no checkpoint could be signed");
    assert_eq!(s.unsealed_tail, 20, "every record is durable and chained");
    assert!(common::metric("kms_audit_checkpoint_deferred_total") >= 1.0);

    custody_up.store(true, Ordering::SeqCst);
    // the deferral lasts one checkpoint period (1 s); the writer's next
    // tick after it seals the tail
    let t = std::time::Instant::now();
    loop {
        let s = verify_dir(&audit_dir, Some(&public)).unwrap();
        if s.checkpoints >= 1 && s.unsealed_tail == 0 {
            assert_eq!(s.records, 21, "20 events and one checkpoint: {s:?}");
            break;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "not sealed within 10 s of the key signing again: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    log.close().await;
}

/// A writer that fails (an I/O error or a panic, injected) turns readiness
/// false and refuses the very next sign with `unavailable`; verify and reads
/// stay answered; after a restart the log verifies and serves again
/// (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_writer_refuses_signing_at_once_and_keeps_verify() {
    use ron_kms::audit::WriterFault;
    for fault in [WriterFault::Io, WriterFault::Panic] {
        let srv = TestServer::start().await;
        let mut c = srv.client(Front::Http, &srv.admin_token).await;
        c.create("s", "ed25519").await.unwrap();
        let sig = c.sign("s", b"m").await.unwrap().signature;
        let (status, _) = c.http_raw(reqwest::Method::GET, "/readyz", vec![]).await;
        assert_eq!(status, 200);

        srv.running().kms.audit().inject_writer_fault(fault);
        // the sign whose record hits the fault is not answered with a signature
        c.sign("s", b"m")
            .await
            .unwrap_err()
            .expect(503, Code::Unavailable, "unavailable");
        let (status, body) = c.http_raw(reqwest::Method::GET, "/readyz", vec![]).await;
        assert_eq!(status, 503, "{fault:?}: {body}");
        let why = body["checks"]["audit"].as_str().unwrap();
        assert!(why.starts_with("error: "), "an operator sees why: {body}");
        // without credentials: the check's name and state, no reason
        let anon = reqwest::get(format!("http://{}/readyz", srv.running().http_addr))
            .await
            .unwrap();
        assert_eq!(anon.status(), 503);
        let anon: serde_json::Value = anon.json().await.unwrap();
        assert_eq!(anon["checks"]["audit"], "error", "{anon}");
        assert_eq!(anon["checks"]["backend"], "ok", "{anon}");
        for front in FRONTS {
            let mut c = srv.client(front, &srv.admin_token).await;
            let e = c.sign("s", b"m").await.unwrap_err();
            e.expect(503, Code::Unavailable, "unavailable");
            assert!(e.message.contains("audit log cannot be written"), "{e:?}");
            c.create("other", "ed25519").await.unwrap_err().expect(
                503,
                Code::Unavailable,
                "unavailable",
            );
            let v = c.verify("s#v1", b"m", &sig).await.unwrap();
            assert!(v.valid, "{front:?}: verify stays available");
            c.get_key("s", false).await.unwrap();
        }
        let metrics = reqwest::get(format!("http://{}/metrics", srv.running().http_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("kms_audit_writer_failed 1"),
            "{fault:?}: gauge set"
        );
        let data = srv.data_dir();
        let mut srv = srv;
        srv.restart().await;
        let (ok, text) = audit_verify(&data.join("audit"));
        assert!(ok, "{fault:?}: the log verifies after the failure: {text}");
        let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
        c.sign("s", b"m").await.unwrap();
    }
}

/// A tmpfs mount for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        assert_eq!(
            rustix::process::geteuid().as_raw(),
            0,
            "this test mounts a small tmpfs and must run as root (scripts/test.sh does)"
        );
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// On a small file system the log's free-space floor turns the service
/// unready and refuses signing before the disk is full: no write fails,
/// verify still answers, and once space is freed it serves again with its
/// keys and its chain intact (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_file_system_turns_the_service_unready_before_it_is_full() {
    const FLOOR: u64 = 4 << 20;
    let root = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&root.path().join("fs"), "24m");
    let data = fs.0.join("data");
    let mut cfg = common::config(&data);
    cfg.audit.min_free_bytes = FLOOR;
    let r = ron_kms::server::start(&cfg).await.unwrap();
    let token = r.bootstrap_token.clone().unwrap();
    let mut c = common::Client::connect(Front::Grpc, &r, &token).await;
    c.create("s", "ed25519").await.unwrap();
    let sig = c.sign("s", b"before").await.unwrap().signature;

    // leave the floor and 1.5 MiB above it free
    let free = |p: &Path| {
        let v = rustix::fs::statvfs(p).unwrap();
        v.f_bavail * v.f_frsize
    };
    let filler = fs.0.join("filler");
    let fill = free(&fs.0) - FLOOR - (3 << 19);
    std::fs::write(&filler, vec![1u8; fill as usize]).unwrap();

    let t0 = std::time::Instant::now();
    let mut signed = 0u64;
    let refusal = loop {
        match c.sign("s", b"m").await {
            Ok(_) => signed += 1,
            Err(e) => break e,
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(120),
            "never refused after {signed} signs; {} bytes free",
            free(&fs.0)
        );
    };
    refusal.expect(503, Code::Unavailable, "unavailable");
    assert!(refusal.message.contains("below its floor"), "{refusal:?}");
    let left = free(&fs.0);
    assert!(
        left > 0,
        "refused before the disk was full: {left} bytes left"
    );
    assert!(
        r.kms.audit().writer_failure().is_none(),
        "no write failed: {:?}",
        r.kms.audit().writer_failure()
    );
    eprintln!("refused after {signed} signs with {left} bytes free (floor {FLOOR})");
    let ready = reqwest::get(format!("http://{}/readyz", r.http_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let v = c.verify("s#v1", b"before", &sig).await.unwrap();
    assert!(v.valid, "verify stays available");

    // space back: ready again within a few seconds, signing works
    std::fs::remove_file(&filler).unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let s = reqwest::get(format!("http://{}/readyz", r.http_addr))
            .await
            .unwrap()
            .status();
        if s == 200 {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "still unready after space was freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    c.sign("s", b"after").await.unwrap();
    r.shutdown().await;
    let (ok, text) = audit_verify(&data.join("audit"));
    assert!(ok, "the chain is intact: {text}");
    let r = ron_kms::server::start(&cfg).await.unwrap();
    let mut c = common::Client::connect(Front::Grpc, &r, &token).await;
    assert!(c.verify("s#v1", b"before", &sig).await.unwrap().valid);
    c.sign("s", b"again").await.unwrap();
    r.shutdown().await;
    drop(fs);
}

/// `KMS_AUDIT_SYNC=write`: operations are answered and audited as with
/// `fsync`, and the background thread syncs what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_sync_write_answers_and_syncs_in_the_background() {
    let synced = || common::metric("kms_audit_background_sync_seconds_count");
    let before = synced();
    let mut s = TestServer::start_with(|c| {
        c.audit.sync = ron_kms::audit::AuditSync::Write {
            interval: std::time::Duration::from_millis(20),
        };
    })
    .await;
    let t = s.token("acme", "kms:admin,kms:sign");
    let mut c = s.client(Front::Grpc, &t).await;
    c.create("k", "ed25519").await.unwrap();
    for i in 0..20 {
        c.sign("k", format!("m{i}").as_bytes()).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(synced() > before, "the background sync ran");
    s.stop().await;
    let (ok, text) = audit_verify(&s.data_dir().join("audit"));
    assert!(ok, "{text}");
    let log: String = ron_kms::audit::chain::segments(&s.data_dir().join("audit"))
        .unwrap()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(log.matches("\"op\":\"sign\"").count(), 20);
}
