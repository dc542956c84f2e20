//! Drills on custody: the device flapping (injected) and the TPM lost.
use super::*;

use crate::softhsm::SoftHsm;

pub(super) async fn hsm_flap(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("hsm-flap");
    let (before, during, after) = lengths(a.short, (20.0, 120.0, 30.0));
    let away_for = if a.short { 3.0 } else { 30.0 };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let hsm_dir = dir.path().join("hsm");
    std::fs::create_dir_all(&hsm_dir).map_err(|e| e.to_string())?;
    let hsm = SoftHsm::new(&hsm_dir, "drill");
    let env: Vec<(&str, String)> = hsm
        .env()
        .into_iter()
        .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut s = start_service(&data, &env)?;
    v.fact(
        "custody",
        "PKCS#11 on a fresh SoftHSM2 token, Ed25519 key on the token",
    );
    let ep = s.endpoint.clone();
    let mix = || sign_verify(&ep, "flap", false);
    sign_verify(&ep, "flap", true).await?;
    let n = a.concurrency;
    v.steady(&ep, "flap", "before", n, before).await?;
    // 400 ms up / 300 ms down, every call 2 ms slower, 5% of calls failing
    s.send("flap 400 300")?;
    s.send("latency 2")?;
    s.send("errors 0.05")?;
    v.fact(
        "fault 1 (fault-injecting wrapper)",
        "the device flaps 400 ms up / 300 ms down, +2 ms per call, 5% of calls fail",
    );
    v.steady(&ep, "flap", "injected faults", n, during).await?;
    s.send("clear")?;
    v.recovery(
        "recovery 1 (fault cleared -> first sign ok)",
        until_sign_ok(&ep, "flap", Duration::from_secs(30)).await,
        "sign works again within 5 s of the injected faults clearing",
        Duration::from_secs(5),
    );
    // a real outage: the token's directory taken away under load
    let token_dir = hsm.token_dir();
    let away = hsm.tokens.with_file_name("token-away");
    v.fact(
        "fault 2 (real outage)",
        format!("the SoftHSM2 token directory renamed away for {away_for:.0} s under load"),
    );
    let outage_mix = mix().await?;
    let outage_clients = workers(&ep, n).await?;
    std::fs::rename(&token_dir, &away).map_err(|e| e.to_string())?;
    let outage = phase(
        "token directory away",
        vec![closed(outage_mix, outage_clients)],
        away_for,
    )
    .await;
    std::fs::rename(&away, &token_dir).map_err(|e| e.to_string())?;
    v.phases.push(outage);
    v.recovery(
        "recovery 2 (token directory back -> first sign ok, ron-kms not restarted)",
        until_sign_ok(&ep, "flap", Duration::from_secs(30)).await,
        "sign works again within 15 s of the token's return (reconnect backoff capped at 10 s)",
        Duration::from_secs(15),
    );
    v.steady(&ep, "flap", "after", n, after).await?;
    v.check_only_sheds();
    let away_ok = v.phases[2].tally.ok;
    v.check(
        format!("verify kept answering while the token was away ({away_ok} ok)"),
        away_ok > 0,
    );
    v.check_ok_share(3, "after the faults");
    v.check_key(&ep, "flap").await;
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}

/// swtpm on two consecutive free loopback ports, its state in `dir`
/// (kept across a kill and restart). Debian package `swtpm`.
struct Swtpm {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Swtpm {
    fn start(dir: &Path) -> Result<Swtpm, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let port = loop {
            let a = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let p = a.local_addr().map_err(|e| e.to_string())?.port();
            if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let mut t = Swtpm {
            dir: dir.to_path_buf(),
            port,
            child: None,
        };
        t.spawn()?;
        Ok(t)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", self.dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("swtpm (Debian package swtpm): {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port + 1)).is_err() {
            if Instant::now() > deadline {
                return Err("swtpm did not open its ports".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) async fn tpm_loss(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("tpm-loss");
    let (before, during, after) = lengths(a.short, (20.0, 30.0, 30.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let mut tpm = Swtpm::start(&dir.path().join("tpm"))?;
    let tcti = tpm.tcti();
    // no fault injection: the device itself goes away
    let s = Server::start_env(
        &["service", "--data-dir", &data.to_string_lossy()],
        &[
            ("KMS_BACKEND", "tpm"),
            ("KMS_TPM_TCTI", &tcti),
            ("KMS_LOG", "warn"),
        ],
        Transport::Grpc,
        None,
    )?;
    let ep = s.endpoint.clone();
    sign_verify(&ep, "tpm", true).await?;
    v.steady(&ep, "tpm", "before", a.concurrency, before)
        .await?;
    v.fact(
        "fault",
        format!("swtpm killed (SIGKILL) under load, restarted {during:.0} s later"),
    );
    // the mix is made while the TPM is up (its verify needs a signature)
    let during_mix = sign_verify(&ep, "tpm", false).await?;
    tpm.kill();
    v.phases.push(
        phase(
            "during (TPM gone)",
            vec![closed(during_mix, workers(&ep, a.concurrency).await?)],
            during,
        )
        .await,
    );
    tpm.spawn()?;
    v.recovery(
        "recovery (swtpm back -> first sign ok, ron-kms not restarted)",
        until_sign_ok(&ep, "tpm", Duration::from_secs(60)).await,
        "sign works again within 15 s of the TPM's return (its reconnect backoff is capped at 10 s)",
        Duration::from_secs(15),
    );
    v.steady(&ep, "tpm", "after", a.concurrency, after).await?;
    v.check_only_sheds();
    let during_ok = v.phases[1].tally.ok;
    v.check(
        format!(
            "verify kept answering while the TPM was gone ({during_ok} ok, from the verify cache)"
        ),
        during_ok > 0,
    );
    v.check_ok_share(2, "after the TPM's return");
    v.check_key(&ep, "tpm").await;
    stop_and_verify(s, &data, &mut v);
    Ok(v)
}
