//! Drills on custody: the device flapping (injected) and the TPM lost.
use super::*;

pub(super) async fn hsm_flap(a: &DrillArgs) -> Result<Verdict, String> {
    let mut v = Verdict::new("hsm-flap");
    let (before, during, after) = lengths(a.short, (20.0, 120.0, 30.0));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = dir.path().join("data");
    let mut s = start_service(&data, &[])?;
    let ep = s.endpoint.clone();
    let mix = || sign_verify(&ep, "flap", false);
    sign_verify(&ep, "flap", true).await?;
    let g = |mix: Mix, clients| Group {
        clients,
        mix,
        pace: Pace::Closed,
    };
    v.phases.push(
        phase(
            "before",
            vec![g(mix().await?, workers(&ep, a.concurrency).await?)],
            before,
        )
        .await,
    );
    // 400 ms up / 300 ms down, every call 2 ms slower, 5% of calls failing
    s.send("flap 400 300")?;
    s.send("latency 2")?;
    s.send("errors 0.05")?;
    v.fact(
        "fault",
        "custody flaps 400 ms up / 300 ms down, +2 ms per call, 5% of calls fail",
    );
    v.phases.push(
        phase(
            "during",
            vec![g(mix().await?, workers(&ep, a.concurrency).await?)],
            during,
        )
        .await,
    );
    s.send("clear")?;
    let rec = until_sign_ok(&ep, "flap", Duration::from_secs(30)).await;
    v.fact(
        "recovery (fault cleared -> first sign ok)",
        rec.map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("never".into()),
    );
    v.check(
        "sign works again within 5 s of the fault clearing",
        rec.is_some_and(|d| d < Duration::from_secs(5)),
    );
    v.phases.push(
        phase(
            "after",
            vec![g(mix().await?, workers(&ep, a.concurrency).await?)],
            after,
        )
        .await,
    );
    v.check_only_sheds();
    v.check_ok_share(2, "after the fault");
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
    let g = |mix: Mix, clients| Group {
        clients,
        mix,
        pace: Pace::Closed,
    };
    v.phases.push(
        phase(
            "before",
            vec![g(
                sign_verify(&ep, "tpm", false).await?,
                workers(&ep, a.concurrency).await?,
            )],
            before,
        )
        .await,
    );
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
            vec![g(during_mix, workers(&ep, a.concurrency).await?)],
            during,
        )
        .await,
    );
    tpm.spawn()?;
    let rec = until_sign_ok(&ep, "tpm", Duration::from_secs(60)).await;
    v.fact(
        "recovery (swtpm back -> first sign ok, ron-kms not restarted)",
        rec.map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or("never".into()),
    );
    v.check(
        "sign works again within 15 s of the TPM's return (its reconnect backoff is capped at 10 s)",
        rec.is_some_and(|d| d < Duration::from_secs(15)),
    );
    v.phases.push(
        phase(
            "after",
            vec![g(
                sign_verify(&ep, "tpm", false).await?,
                workers(&ep, a.concurrency).await?,
            )],
            after,
        )
        .await,
    );
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
