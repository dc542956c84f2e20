//! Key settings (UpdateKey) and DeleteKey on the native fronts, gRPC and
//! HTTP: version floors hold for every operation, deletion needs
//! `deletion_allowed`, settings survive a restart, and another tenant can
//! touch neither (docs/api.md, "Key settings"; the transit front's config
//! and delete routes are these operations).
mod common;

use common::{Front, TestServer, FRONTS};
use ron_kms::proto::UpdateKeyRequest;

fn floors(name: &str, dec: Option<u32>, enc: Option<u32>) -> UpdateKeyRequest {
    UpdateKeyRequest {
        name: name.into(),
        min_decryption_version: dec,
        min_encryption_version: enc,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_floors_hold_for_every_operation_on_both_fronts() {
    let mut s = TestServer::start().await;
    let t = s.token(
        "acme",
        "kms:admin,kms:read,kms:sign,kms:verify,kms:wrap,kms:unwrap",
    );
    for front in FRONTS {
        let mut c = s.client(front, &t).await;
        let tag = format!("{front:?}").to_lowercase();
        let (aes, ed) = (format!("aes-{tag}"), format!("ed-{tag}"));
        c.create(&aes, "aes-256-gcm").await.unwrap();
        c.create(&ed, "ed25519").await.unwrap();
        let old_ct = c.wrap(&aes, b"secret", b"ad").await.unwrap().ciphertext;
        let old_sig = c.sign(&ed, b"msg").await.unwrap().signature;
        c.rotate(&aes, "").await.unwrap();
        c.rotate(&ed, "").await.unwrap();

        // floors above the latest version, or an encryption floor below
        // the decryption floor, are refused
        let e = c.update_key(floors(&aes, Some(3), None)).await.unwrap_err();
        e.expect(400, tonic::Code::InvalidArgument, "invalid_argument");
        let e = c
            .update_key(floors(&aes, Some(2), Some(1)))
            .await
            .unwrap_err();
        e.expect(400, tonic::Code::InvalidArgument, "invalid_argument");

        let k = c
            .update_key(floors(&aes, Some(2), None))
            .await
            .unwrap()
            .key
            .unwrap();
        assert_eq!((k.min_decryption_version, k.min_encryption_version), (2, 0));
        let e = c.unwrap(&aes, &old_ct, b"ad").await.unwrap_err();
        e.expect(409, tonic::Code::FailedPrecondition, "failed_precondition");
        assert!(e.message.contains("min_decryption_version"), "{e:?}");
        let e = c.wrap(&format!("{aes}#v1"), b"x", b"").await.unwrap_err();
        e.expect(409, tonic::Code::FailedPrecondition, "failed_precondition");
        // v2 works as before
        let ct = c.wrap(&aes, b"secret", b"ad").await.unwrap().ciphertext;
        assert_eq!(
            c.unwrap(&aes, &ct, b"ad").await.unwrap().plaintext,
            b"secret"
        );

        // verify of an old signature: refused once the floor moves (the
        // verify cache is dropped with the change)
        assert!(
            c.verify(&format!("{ed}#v1"), b"msg", &old_sig)
                .await
                .unwrap()
                .valid
        );
        c.update_key(floors(&ed, Some(2), None)).await.unwrap();
        let e = c
            .verify(&format!("{ed}#v1"), b"msg", &old_sig)
            .await
            .unwrap_err();
        e.expect(409, tonic::Code::FailedPrecondition, "failed_precondition");
        // lowering the floor again restores it
        c.update_key(floors(&ed, Some(0), None)).await.unwrap();
        assert!(
            c.verify(&format!("{ed}#v1"), b"msg", &old_sig)
                .await
                .unwrap()
                .valid
        );

        // min_encryption_version: naming v1 to sign is refused, v1
        // signatures still verify
        c.update_key(floors(&ed, None, Some(2))).await.unwrap();
        let e = c.sign(&format!("{ed}#v1"), b"m").await.unwrap_err();
        e.expect(409, tonic::Code::FailedPrecondition, "failed_precondition");
        assert!(e.message.contains("min_encryption_version"), "{e:?}");
        assert!(
            c.verify(&format!("{ed}#v1"), b"msg", &old_sig)
                .await
                .unwrap()
                .valid
        );
    }

    // settings are stored: after a restart they still hold
    s.restart().await;
    let mut c = s.client(Front::Grpc, &t).await;
    let k = c.get_key("aes-grpc", false).await.unwrap();
    assert_eq!(k.min_decryption_version, 2);
    let k = c.get_key("ed-http", false).await.unwrap();
    assert_eq!((k.min_decryption_version, k.min_encryption_version), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_needs_deletion_allowed_and_leaves_nothing() {
    let s = TestServer::start().await;
    let t = s.token("acme", "kms:admin,kms:read,kms:sign,kms:verify");
    let other = s.token("umbrella", "kms:admin,kms:read");
    let weak = s.token("acme", "kms:sign,kms:verify,kms:read");
    for front in FRONTS {
        let mut c = s.client(front, &t).await;
        let name = format!("gone-{front:?}").to_lowercase();
        c.create(&name, "ed25519").await.unwrap();
        c.rotate(&name, "").await.unwrap();
        let e = c.delete_key(&name).await.unwrap_err();
        e.expect(409, tonic::Code::FailedPrecondition, "failed_precondition");
        assert!(e.message.contains("deletion_allowed"), "{e:?}");

        // neither another tenant nor a caller without kms:admin may
        let mut o = s.client(front, &other).await;
        let e = o
            .update_key(UpdateKeyRequest {
                name: name.clone(),
                deletion_allowed: Some(true),
                ..Default::default()
            })
            .await
            .unwrap_err();
        e.expect(404, tonic::Code::NotFound, "not_found");
        let e = o.delete_key(&name).await.unwrap_err();
        e.expect(404, tonic::Code::NotFound, "not_found");
        let mut w = s.client(front, &weak).await;
        let e = w.delete_key(&name).await.unwrap_err();
        e.expect(403, tonic::Code::PermissionDenied, "permission_denied");

        let k = c
            .update_key(UpdateKeyRequest {
                name: name.clone(),
                deletion_allowed: Some(true),
                ..Default::default()
            })
            .await
            .unwrap()
            .key
            .unwrap();
        assert!(k.deletion_allowed);
        let handles: Vec<_> = (1..=2)
            .map(|v| common::stored_handle(&s.data_dir(), "acme", &name, v))
            .collect();
        assert!(handles.iter().all(Option::is_some));
        let r = c.delete_key(&name).await.unwrap();
        assert_eq!((r.name.as_str(), r.destroyed_versions), (name.as_str(), 2));
        let e = c.get_key(&name, false).await.unwrap_err();
        e.expect(404, tonic::Code::NotFound, "not_found");
        let e = c.sign(&name, b"m").await.unwrap_err();
        e.expect(404, tonic::Code::NotFound, "not_found");
        let conn = rusqlite::Connection::open(s.data_dir().join("kms.sqlite3")).unwrap();
        let rows: i64 = conn
            .query_row(
                "SELECT (SELECT count(*) FROM keys WHERE name = ?1) + (SELECT count(*) FROM key_versions WHERE name = ?1)",
                [&name],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 0, "no key or version record is left in the store");
        drop(conn);
        // the name can be used again: a new key from version 1
        let k = c.create(&name, "ecdsa-p256").await.unwrap();
        assert_eq!((k.versions.len(), k.algorithm.as_str()), (1, "ecdsa-p256"));
        assert!(!k.deletion_allowed);
    }
}
