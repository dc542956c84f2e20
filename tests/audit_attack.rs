//! The audit log under attack: a process killed between a change's intent
//! and its outcome, again and again, loses nothing from the log; a flood of
//! bad tokens from one address is shed and costs a few records.
mod common;

use std::path::Path;
use std::process::Command;

use common::process::{audit_verify, serve};
use common::{Front, TestServer};
use ron_kms::proto::kms_client::KmsClient;
use ron_kms::proto::SignRequest;
use tonic::Code;

/// Every record of every segment of `dir`, parsed.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    ron_kms::audit::chain::segments(dir)
        .unwrap()
        .iter()
        .flat_map(|p| {
            let text = std::fs::read(p).unwrap();
            String::from_utf8(ron_kms::audit::chain::content(&text).to_vec())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A random number below `n` (the test's kill points).
fn below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    ron_kms::crypto::random_bytes(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_a_changes_intent_and_its_commit_loses_nothing_from_the_log() {
    use ron_kms::proto::{CreateKeyRequest, ListKeysRequest, RotateKeyRequest};
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut token = None;
    const ROUNDS: usize = 10;
    let mut acked_total = 0usize;
    for round in 0..ROUNDS {
        let s = serve(&data);
        if token.is_none() {
            token = s.token.clone();
        }
        let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {}", token.as_ref().unwrap())
            .parse()
            .unwrap();
        let c = KmsClient::connect(s.grpc.clone()).await.unwrap();
        // four clients creating and rotating keys, two signing: the changes
        // queue on the mutation lock with their intents already durable
        let mut tasks = Vec::new();
        for t in 0..6 {
            let mut c = c.clone();
            let auth = auth.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = 0usize;
                for i in 0.. {
                    let name = format!("k{round}-{t}-{i}");
                    let r = if t >= 4 {
                        let mut r = tonic::Request::new(SignRequest {
                            key: "k0-0-0".into(),
                            message: vec![i as u8; 32],
                            ..Default::default()
                        });
                        r.metadata_mut().insert("authorization", auth.clone());
                        c.sign(r).await.map(|_| ())
                    } else if i % 3 == 0 {
                        let mut r = tonic::Request::new(CreateKeyRequest {
                            name,
                            algorithm: "ed25519".into(),
                            ..Default::default()
                        });
                        r.metadata_mut().insert("authorization", auth.clone());
                        c.create_key(r).await.map(|_| ())
                    } else {
                        let mut r = tonic::Request::new(RotateKeyRequest {
                            name: format!("k{round}-{t}-{}", i - i % 3),
                            ..Default::default()
                        });
                        r.metadata_mut().insert("authorization", auth.clone());
                        c.rotate_key(r).await.map(|_| ())
                    };
                    match r {
                        Ok(()) => acked += 1,
                        // the first round's signer may start before k0-0-0
                        Err(e) if e.code() == Code::NotFound => {}
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(150 + below(450))).await;
        assert!(Command::new("kill")
            .args(["-9", &s.child.id().to_string()])
            .status()
            .unwrap()
            .success());
        for t in tasks {
            acked_total += t.await.unwrap();
        }
        drop(s);
    }
    assert!(acked_total > 100, "load ran ({acked_total} acknowledged)");

    // after a last restart: what the store holds
    let s = serve(&data);
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {}", token.as_ref().unwrap())
        .parse()
        .unwrap();
    let mut c = KmsClient::connect(s.grpc.clone()).await.unwrap();
    let mut versions = std::collections::BTreeMap::<String, Vec<u32>>::new();
    let mut page = String::new();
    loop {
        let mut r = tonic::Request::new(ListKeysRequest {
            page_size: 1000,
            page_token: page.clone(),
        });
        r.metadata_mut().insert("authorization", auth.clone());
        let out = c.list_keys(r).await.unwrap().into_inner();
        for k in out.keys {
            versions.insert(k.name, k.versions.iter().map(|v| v.version).collect());
        }
        if out.next_page_token.is_empty() {
            break;
        }
        page = out.next_page_token;
    }
    assert!(s.terminate().success());

    let dir = data.join("audit");
    let mut ok = std::collections::BTreeSet::new();
    let mut open = std::collections::BTreeMap::<u64, (String, String)>::new();
    for r in records(&dir) {
        let op = r["op"].as_str().unwrap().to_string();
        if op != "create_key" && op != "rotate_key" {
            continue;
        }
        let kid = r["kid"].as_str().unwrap_or("").to_string();
        match r["result"].as_str().unwrap() {
            "intent" => {
                open.insert(r["seq"].as_u64().unwrap(), (op, kid));
            }
            result => {
                let intent = r["intent"]
                    .as_u64()
                    .expect("every outcome names its intent");
                assert!(open.remove(&intent).is_some(), "{r}");
                if result == "ok" {
                    ok.insert(kid);
                }
            }
        }
    }
    let mut dangling_by_key = std::collections::BTreeMap::<String, usize>::new();
    for (_, name) in open.values() {
        *dangling_by_key.entry(name.clone()).or_default() += 1;
    }
    // every committed version has its ok outcome, or a dangling intent on
    // its key stands for it
    let mut uncovered = Vec::new();
    for (name, vs) in &versions {
        let without: Vec<u32> = vs
            .iter()
            .copied()
            .filter(|v| !ok.contains(&format!("{name}#v{v}")))
            .collect();
        if without.len() > dangling_by_key.get(name).copied().unwrap_or(0) {
            uncovered.push((name.clone(), without));
        }
    }
    assert!(
        uncovered.is_empty(),
        "committed versions missing from the log: {uncovered:?}"
    );
    // and audit verify names exactly those intents
    let (verified, text) = audit_verify(&dir);
    assert!(verified, "{text}");
    assert!(
        !open.is_empty(),
        "no kill of {ROUNDS} landed between an intent and its outcome"
    );
    assert!(
        text.contains(&format!("{} intents without an outcome", open.len())),
        "{text}"
    );
    for seq in open.keys() {
        assert!(text.contains(&format!("intent {seq}: ")), "{seq}: {text}");
    }
    eprintln!(
        "{ROUNDS} kills; {acked_total} acknowledged; {} keys, {} versions; {} dangling intents",
        versions.len(),
        versions.values().map(Vec::len).sum::<usize>(),
        open.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_flood_is_shed_per_address_and_costs_a_few_records() {
    let mut srv = TestServer::start().await;
    let mut c = srv.client(Front::Grpc, &srv.admin_token).await;
    c.create("k", "ed25519").await.unwrap();
    let http = srv.running().http_addr;
    // the stranger comes from 127.0.0.2; the tenant signs from 127.0.0.1
    let stranger = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    const FLOOD: usize = 4000;
    let url = format!("http://{http}/v1/kms/sign");
    let flood = tokio::spawn(async move {
        let mut codes = std::collections::BTreeMap::<u16, usize>::new();
        let mut retry_after = None;
        let mut sent = 0;
        while sent < FLOOD {
            let mut batch = tokio::task::JoinSet::new();
            for i in 0..32 {
                let req = stranger
                    .post(&url)
                    .bearer_auth(format!("rkms_guess-{}", sent + i))
                    .json(&serde_json::json!({"key": "k", "message": "eA=="}));
                batch.spawn(req.send());
            }
            while let Some(r) = batch.join_next().await {
                let r = r.unwrap().unwrap();
                if r.status() == 429 {
                    retry_after = r.headers().get("retry-after").cloned();
                    let body: serde_json::Value = r.json().await.unwrap();
                    assert_eq!(body["error"]["code"], "auth_failures", "{body}");
                    *codes.entry(429).or_default() += 1;
                } else {
                    *codes.entry(r.status().as_u16()).or_default() += 1;
                }
            }
            sent += 32;
        }
        (codes, retry_after)
    });
    let mut signed = 0;
    while !flood.is_finished() {
        c.sign("k", b"legitimate")
            .await
            .expect("the tenant is not shed");
        signed += 1;
    }
    let (codes, retry_after) = flood.await.unwrap();
    eprintln!("flood: {codes:?}; {signed} signs");
    assert!(signed > 10, "{signed}");
    let total: usize = codes.values().sum();
    assert_eq!(total, FLOOD);
    assert!(
        codes.get(&401).copied().unwrap_or(0) <= 80,
        "only the burst is looked at: {codes:?}"
    );
    assert!(codes[&429] >= FLOOD - 80, "{codes:?}");
    assert!(retry_after.is_some(), "a shed names its wait");
    srv.stop().await;

    let recs = records(&srv.data_dir().join("audit"));
    let strangers: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["result"] == "unauthenticated")
        .collect();
    // the first refusal at once, the rest in one aggregate per 10 s
    assert!(
        (2..=3).contains(&strangers.len()),
        "{} records: {strangers:?}",
        strangers.len()
    );
    let counted: u64 = strangers
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .filter_map(|why| why.strip_prefix("aggregate count="))
        .map(|rest| {
            let mut it = rest.split(' ');
            let refused: u64 = it.next().unwrap().parse().unwrap();
            let shed: u64 = it
                .next()
                .unwrap()
                .strip_prefix("shed=")
                .unwrap()
                .parse()
                .unwrap();
            refused + shed
        })
        .sum();
    assert_eq!(counted + 1, FLOOD as u64, "every refusal is counted");
    assert!(strangers
        .iter()
        .skip(1)
        .all(|r| r["reason"].as_str().unwrap().contains("source=127.0.0.2")));
}
