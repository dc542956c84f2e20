//! What a run drives: keys made, tenants and their tokens, the groups of
//! workers with their load mix and pace.
use super::*;

/// Create key `name` (when `create`) and prepare the request `op` repeats
/// against it (a verify's signature and an unwrap's envelope are made here).
/// `digest`: sign and verify a digest of the kind `alg` takes (filled with
/// 0x5a, `size` ignored) instead of a message.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare(
    mut c: KmsClient<Channel>,
    token: &str,
    op: Op,
    alg: Algorithm,
    name: &str,
    size: usize,
    digest: bool,
    create: bool,
) -> Result<Work, String> {
    let name = name.to_string();
    if create {
        c.create_key(with_auth(
            CreateKeyRequest {
                name: name.clone(),
                algorithm: alg.as_str().into(),
                ..Default::default()
            },
            token,
        )?)
        .await
        .map_err(|s| format!("create_key: {}", load::grpc_code(&s)))?;
    }
    let (message, digest) = if digest {
        let kind = alg
            .prehash()
            .ok_or_else(|| format!("--digest: {alg} keys do not sign digests"))?;
        (Vec::new(), vec![0x5a; kind.digest_len()])
    } else {
        (vec![0x5a; size], Vec::new())
    };
    Ok(match op {
        Op::Sign => Work::Sign(SignRequest {
            context: Vec::new(),
            key: name,
            message,
            op_id: String::new(),
            digest,
            ..Default::default()
        }),
        Op::Verify => {
            let s = c
                .sign(with_auth(
                    SignRequest {
                        context: Vec::new(),
                        key: name,
                        message: message.clone(),
                        op_id: String::new(),
                        digest: digest.clone(),
                        ..Default::default()
                    },
                    token,
                )?)
                .await
                .map_err(|s| format!("sign: {}", load::grpc_code(&s)))?
                .into_inner();
            Work::Verify(VerifyRequest {
                context: Vec::new(),
                key: s.kid,
                message,
                signature: s.signature,
                digest,
                ..Default::default()
            })
        }
        Op::Wrap => Work::Wrap(WrapRequest {
            key: name,
            plaintext: message,
            ..Default::default()
        }),
        Op::Unwrap => {
            let w = c
                .wrap(with_auth(
                    WrapRequest {
                        key: name,
                        plaintext: message,
                        ..Default::default()
                    },
                    token,
                )?)
                .await
                .map_err(|s| format!("wrap: {}", load::grpc_code(&s)))?
                .into_inner();
            Work::Unwrap(UnwrapRequest {
                ciphertext: w.ciphertext,
                ..Default::default()
            })
        }
    })
}

/// Whose token a group's workers present.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tenant {
    A,
    B,
}

/// How many of a run's `concurrency` workers a group gets.
#[derive(Clone, Copy)]
pub(crate) enum Workers {
    /// This fraction of the concurrency (at least one).
    Share(f64),
    Fixed(usize),
}

pub(crate) struct PlanGroup {
    pub(crate) tenant: Tenant,
    pub(crate) workers: Workers,
    pub(crate) entries: Vec<(String, Work, u32)>,
    pub(crate) pace: Pace,
}

/// What one run sends: groups of workers, each with its mix and pace.
pub(crate) struct Plan {
    /// The report's `op`: the operation, or `mix-<name>`.
    pub(crate) name: String,
    pub(crate) groups: Vec<PlanGroup>,
}

impl Plan {
    pub(crate) fn items(&self) -> usize {
        self.groups
            .first()
            .and_then(|g| g.entries.first())
            .map(|e| e.1.items())
            .unwrap_or(1)
    }
}

/// The main group's pace: closed, or open at --rate (with the burst window
/// for the burst mix: the middle fifth of the measured window at 10x).
pub(crate) fn main_pace(a: &RunArgs) -> Pace {
    match a.rate {
        None => Pace::Closed,
        Some(rate) => Pace::Open(Schedule {
            rate,
            burst: (a.mix == Some(MixKind::Burst)).then_some(Burst {
                start: a.warmup + 0.4 * a.duration,
                len: 0.2 * a.duration,
                factor: 10.0,
            }),
        }),
    }
}

/// Create what the run needs on `ep` and plan it. `service` is false for
/// the bare server (one preloaded key: nothing to create).
pub(crate) async fn plan(
    ep: &Endpoint,
    a: &RunArgs,
    alg: Algorithm,
    service: bool,
) -> Result<Plan, String> {
    let token = ep.token.as_str();
    let size = a.size;
    let c = load::grpc_clients(ep, 1).await?.remove(0);
    let Some(mix) = a.mix else {
        // one operation, on --keys keys, created 16 at a time
        let mut entries = Vec::new();
        let keys = a.keys.max(1);
        let mut k = 0;
        while k < keys {
            let mut tasks = Vec::new();
            for i in k..(k + 16).min(keys) {
                let name = if i == 0 {
                    format!("bench-{}", alg.as_str())
                } else {
                    format!("bench-{}-{i}", alg.as_str())
                };
                let (c, token, op, digest) = (c.clone(), token.to_string(), a.op, a.digest);
                tasks.push(tokio::spawn(async move {
                    prepare(c, &token, op, alg, &name, size, digest, service).await
                }));
            }
            k = (k + 16).min(keys);
            for t in tasks {
                let w = t.await.map_err(|e| e.to_string())??;
                entries.push((a.op.as_str().to_string(), w.batch(a.batch), 1));
            }
            if keys > 1 && k % 1000 == 0 && !a.quiet {
                eprintln!("  {k} keys created");
            }
        }
        return Ok(Plan {
            name: a.op.as_str().into(),
            groups: vec![PlanGroup {
                tenant: Tenant::A,
                workers: Workers::Share(1.0),
                entries,
                pace: main_pace(a),
            }],
        });
    };
    let sign = format!("bench-{}", alg.as_str());
    let kem = Algorithm::MlKem768;
    let wrap = "bench-wrap".to_string();
    let groups = match mix {
        MixKind::Steady | MixKind::Burst => {
            let mut entries = vec![(
                "sign".to_string(),
                prepare(c.clone(), token, Op::Sign, alg, &sign, size, false, true).await?,
                70,
            )];
            entries.push((
                "verify".into(),
                prepare(c.clone(), token, Op::Verify, alg, &sign, size, false, false).await?,
                20,
            ));
            entries.push((
                "wrap".into(),
                prepare(c.clone(), token, Op::Wrap, kem, &wrap, size, false, true).await?,
                5,
            ));
            entries.push((
                "unwrap".into(),
                prepare(c.clone(), token, Op::Unwrap, kem, &wrap, size, false, false).await?,
                5,
            ));
            vec![PlanGroup {
                tenant: Tenant::A,
                workers: Workers::Share(1.0),
                entries,
                pace: main_pace(a),
            }]
        }
        MixKind::RotateFlood => {
            let w = prepare(c.clone(), token, Op::Sign, alg, &sign, size, false, true).await?;
            vec![
                PlanGroup {
                    tenant: Tenant::A,
                    workers: Workers::Share(1.0),
                    entries: vec![("sign".into(), w, 1)],
                    pace: main_pace(a),
                },
                PlanGroup {
                    tenant: Tenant::A,
                    workers: Workers::Fixed(1),
                    entries: vec![(
                        "rotate".into(),
                        Work::Rotate(RotateKeyRequest {
                            name: sign.clone(),
                            ..Default::default()
                        }),
                        1,
                    )],
                    pace: Pace::Open(Schedule {
                        rate: a.rotate_rate,
                        burst: None,
                    }),
                },
            ]
        }
        MixKind::TenantIsolation => {
            let b = ep
                .token_b
                .as_deref()
                .ok_or("the server gave no second tenant token")?;
            let wa = prepare(c.clone(), token, Op::Sign, alg, &sign, size, false, true).await?;
            let wb = prepare(c.clone(), b, Op::Sign, alg, &sign, size, false, true).await?;
            vec![
                PlanGroup {
                    tenant: Tenant::A,
                    workers: Workers::Share(0.8),
                    entries: vec![("tenant-a:sign".into(), wa, 1)],
                    pace: main_pace(a),
                },
                PlanGroup {
                    tenant: Tenant::B,
                    workers: Workers::Share(0.2),
                    entries: vec![("tenant-b:sign".into(), wb, 1)],
                    pace: main_pace(a),
                },
            ]
        }
    };
    Ok(Plan {
        name: format!("mix-{}", mix.as_str()),
        groups,
    })
}
