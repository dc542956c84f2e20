//! tokio-console: `KMS_CONSOLE_ADDR` turns the console instrumentation on at
//! run time in a build with the `console` feature (and `--cfg tokio_unstable`);
//! a build without it refuses the setting at start-up instead of ignoring it.
//!
//! `scripts/test.sh` runs this file twice: in the default build (the refusal)
//! and in a console build (the endpoint, checked with the console's own wire
//! API as `tokio-console` would use it).
mod common;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[cfg(not(feature = "console"))]
#[test]
fn a_build_without_the_console_feature_refuses_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::process::BIN)
        .args(["serve", "--amnesia", "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .env("KMS_CONSOLE_ADDR", format!("127.0.0.1:{}", free_port()))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KMS_CONSOLE_ADDR") && err.contains("--features console"),
        "{err}"
    );
}

#[cfg(feature = "console")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_endpoint_streams_the_servers_tasks() {
    use console_api::instrument::instrument_client::InstrumentClient;
    use console_api::instrument::InstrumentRequest;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let served = common::process::serve_with(
        &["--amnesia".as_ref()],
        &[("KMS_CONSOLE_ADDR", addr.as_ref())],
        Some(dir.path()),
    );
    // some traffic, so request tasks exist too
    let _ = common::process::http_get(&served.http, "/readyz");

    let mut client = None;
    for _ in 0..50 {
        match InstrumentClient::connect(format!("http://{addr}")).await {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut client = client.expect("the console endpoint accepts connections");
    let mut updates = client
        .watch_updates(InstrumentRequest {})
        .await
        .unwrap()
        .into_inner();
    // The first update can come before the aggregator has seen any task
    // (it did once in CI); read updates until one carries tasks, for 10 s.
    let saw_tasks = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match updates.message().await {
                Ok(Some(u))
                    if u.task_update
                        .as_ref()
                        .is_some_and(|t| !t.new_tasks.is_empty()) =>
                {
                    return true
                }
                Ok(Some(_)) => continue,
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(
        saw_tasks,
        "the console sees the server's tasks within 10 s (built with --cfg tokio_unstable?)"
    );
    drop(served);
}
