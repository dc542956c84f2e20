//! The admission, ingress and TLS settings: `[admission]`, `[tenants.NAME]`,
//! `[ingress]` and `[tls]` in the file, flat `KMS_*` names in the
//! environment (env wins). docs/configuration.md lists them with defaults.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::{err, parse_bool, ConfigError, Env};
use crate::admission::{AdmissionConfig, TenantLimits};
use crate::ingress::tls::{MtlsRule, TlsSettings};
use crate::ingress::Limits;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionFile {
    pub max_inflight_sign: Option<u32>,
    pub max_inflight_verify: Option<u32>,
    pub max_inflight_wrap: Option<u32>,
    pub max_inflight_unwrap: Option<u32>,
    pub max_inflight_admin: Option<u32>,
    pub queue: Option<usize>,
    pub max_wait_ms: Option<u64>,
    pub tenant_share_min: Option<f64>,
    pub tenant_rps: Option<f64>,
    pub tenant_burst: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    pub weight: Option<f64>,
    pub rps: Option<f64>,
    pub burst: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressFile {
    pub max_connections: Option<usize>,
    pub header_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub h2_max_streams: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_crl_file: Option<PathBuf>,
    pub require_client_cert: Option<bool>,
    pub mtls_tenant_uri: Option<String>,
    pub mtls_scopes: Option<String>,
    pub require_pq: Option<bool>,
}

use crate::ingress::tls::DEFAULT_MTLS_SCOPES;

/// env `name` parsed, else the file's value (TOML has typed it already).
fn setting<T: FromStr>(
    env: &dyn Env,
    name: &str,
    file: Option<T>,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    match env.var(name) {
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| err(name, format!("{v:?} is not {what}"))),
        None => Ok(file),
    }
}

fn positive<T: PartialOrd + Default + Copy>(
    v: Option<T>,
    default: T,
    field: &str,
) -> Result<T, ConfigError> {
    let v = v.unwrap_or(default);
    if v <= T::default() {
        return Err(err(field, "must be greater than 0"));
    }
    Ok(v)
}

/// `payments:weight=2,rps=500;ci:rps=50` (KMS_TENANT_LIMITS).
fn parse_tenant_limits(s: &str) -> Result<BTreeMap<String, TenantFile>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (tenant, kvs) = part
            .split_once(':')
            .ok_or_else(|| format!("{part:?}: expected tenant:key=value,…"))?;
        let tenant = tenant.trim();
        crate::auth::validate_tenant(tenant)?;
        let mut t = TenantFile::default();
        for kv in kvs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
            let bad = || format!("{tenant}: {k}={v:?} is not a number");
            match k.trim() {
                "weight" => t.weight = Some(v.trim().parse().map_err(|_| bad())?),
                "rps" => t.rps = Some(v.trim().parse().map_err(|_| bad())?),
                "burst" => t.burst = Some(v.trim().parse().map_err(|_| bad())?),
                other => {
                    return Err(format!(
                        "{tenant}: unknown limit {other:?} (weight, rps, burst)"
                    ))
                }
            }
        }
        out.insert(tenant.to_string(), t);
    }
    Ok(out)
}

pub(super) struct Loaded {
    pub admission: AdmissionConfig,
    pub ingress: Limits,
    pub tls: Option<TlsSettings>,
}

pub(super) fn load(
    admission: AdmissionFile,
    tenants: Option<BTreeMap<String, TenantFile>>,
    ingress: IngressFile,
    tls: TlsFile,
    env: &dyn Env,
    fname: &str,
) -> Result<Loaded, ConfigError> {
    let d = AdmissionConfig::default();
    let n = "a positive whole number";
    let mut inflight = d.inflight;
    let ops = [
        ("KMS_MAX_INFLIGHT_SIGN", admission.max_inflight_sign),
        ("KMS_MAX_INFLIGHT_VERIFY", admission.max_inflight_verify),
        ("KMS_MAX_INFLIGHT_WRAP", admission.max_inflight_wrap),
        ("KMS_MAX_INFLIGHT_UNWRAP", admission.max_inflight_unwrap),
        ("KMS_MAX_INFLIGHT_ADMIN", admission.max_inflight_admin),
    ];
    for (i, (env_name, file_v)) in ops.into_iter().enumerate() {
        let v = setting(env, env_name, file_v, n)?;
        inflight[i] = positive(v, d.inflight[i], env_name)?;
    }
    let queue = setting(
        env,
        "KMS_ADMISSION_QUEUE",
        admission.queue,
        "a whole number",
    )?
    .unwrap_or(d.queue);
    let max_wait_ms = setting(
        env,
        "KMS_ADMISSION_MAX_WAIT_MS",
        admission.max_wait_ms,
        "milliseconds",
    )?
    .unwrap_or(d.max_wait.as_millis() as u64);
    let share_min = setting(
        env,
        "KMS_TENANT_SHARE_MIN",
        admission.tenant_share_min,
        "a fraction",
    )?
    .unwrap_or(d.share_min);
    if !(0.0..=1.0).contains(&share_min) || share_min.is_nan() {
        return Err(err("KMS_TENANT_SHARE_MIN", "must be between 0 and 1"));
    }
    let tenant_rps = setting(
        env,
        "KMS_TENANT_RPS",
        admission.tenant_rps,
        "requests per second",
    )?
    .filter(|r| *r != 0.0);
    if tenant_rps.is_some_and(|r| r < 0.0 || !r.is_finite()) {
        return Err(err(
            "KMS_TENANT_RPS",
            "must be a positive number (0 = no cap)",
        ));
    }
    let tenant_burst = setting(env, "KMS_TENANT_BURST", admission.tenant_burst, n)?;
    if tenant_burst == Some(0) {
        return Err(err("KMS_TENANT_BURST", "must be greater than 0"));
    }
    let tenants = match env.var("KMS_TENANT_LIMITS") {
        Some(v) => parse_tenant_limits(&v).map_err(|e| err("KMS_TENANT_LIMITS", e))?,
        None => tenants.unwrap_or_default(),
    };
    let mut tl = BTreeMap::new();
    for (name, t) in tenants {
        let field = format!("tenants.{name} in {fname}");
        crate::auth::validate_tenant(&name).map_err(|e| err(&field, e))?;
        let weight = t.weight.unwrap_or(1.0);
        if !(weight > 0.0 && weight <= 10_000.0) {
            return Err(err(
                &field,
                "weight must be greater than 0 and at most 10000",
            ));
        }
        if t.rps.is_some_and(|r| r < 0.0 || !r.is_finite()) || t.burst == Some(0) {
            return Err(err(&field, "rps must be ≥ 0 (0 = no cap) and burst > 0"));
        }
        // unset rps inherits the default cap (and its burst); 0 = no cap
        let (rps, burst) = match t.rps {
            None => (tenant_rps, t.burst.or(tenant_burst)),
            Some(r) => ((r != 0.0).then_some(r), t.burst),
        };
        tl.insert(name, TenantLimits { weight, rps, burst });
    }
    let admission = AdmissionConfig {
        inflight,
        queue,
        max_wait: Duration::from_millis(max_wait_ms),
        share_min,
        tenant_rps,
        tenant_burst,
        tenants: tl,
        ..AdmissionConfig::default()
    };

    let li = Limits::default();
    let ms = "milliseconds";
    let ingress = Limits {
        max_connections: positive(
            setting(env, "KMS_MAX_CONNECTIONS", ingress.max_connections, n)?,
            li.max_connections,
            "KMS_MAX_CONNECTIONS",
        )?,
        header_timeout: Duration::from_millis(positive(
            setting(env, "KMS_HEADER_TIMEOUT_MS", ingress.header_timeout_ms, ms)?,
            li.header_timeout.as_millis() as u64,
            "KMS_HEADER_TIMEOUT_MS",
        )?),
        idle_timeout: Duration::from_millis(positive(
            setting(env, "KMS_IDLE_TIMEOUT_MS", ingress.idle_timeout_ms, ms)?,
            li.idle_timeout.as_millis() as u64,
            "KMS_IDLE_TIMEOUT_MS",
        )?),
        request_timeout: Duration::from_millis(positive(
            setting(
                env,
                "KMS_REQUEST_TIMEOUT_MS",
                ingress.request_timeout_ms,
                ms,
            )?,
            li.request_timeout.as_millis() as u64,
            "KMS_REQUEST_TIMEOUT_MS",
        )?),
        h2_max_streams: positive(
            setting(env, "KMS_H2_MAX_STREAMS", ingress.h2_max_streams, n)?,
            li.h2_max_streams,
            "KMS_H2_MAX_STREAMS",
        )?,
    };

    let path =
        |env_name: &str, file: Option<PathBuf>| env.var(env_name).map(PathBuf::from).or(file);
    let cert = path("KMS_TLS_CERT_FILE", tls.cert_file);
    let key = path("KMS_TLS_KEY_FILE", tls.key_file);
    let ca = path("KMS_TLS_CLIENT_CA_FILE", tls.client_ca_file);
    let crl = path("KMS_TLS_CLIENT_CRL_FILE", tls.client_crl_file);
    let require = match env.var("KMS_TLS_REQUIRE_CLIENT_CERT") {
        Some(v) => parse_bool(&v)
            .ok_or_else(|| err("KMS_TLS_REQUIRE_CLIENT_CERT", "must be true or false"))?,
        None => tls.require_client_cert.unwrap_or(false),
    };
    let uri = env.var("KMS_MTLS_TENANT_URI").or(tls.mtls_tenant_uri);
    let require_pq = match env.var("KMS_TLS_REQUIRE_PQ") {
        Some(v) => {
            Some(parse_bool(&v).ok_or_else(|| err("KMS_TLS_REQUIRE_PQ", "must be true or false"))?)
        }
        None => tls.require_pq,
    };
    let scopes = env.var("KMS_MTLS_SCOPES").or(tls.mtls_scopes);
    let tls = match (cert, key) {
        (None, None) => {
            for (set, name) in [
                (ca.is_some(), "KMS_TLS_CLIENT_CA_FILE"),
                (crl.is_some(), "KMS_TLS_CLIENT_CRL_FILE"),
                (require, "KMS_TLS_REQUIRE_CLIENT_CERT"),
                (uri.is_some(), "KMS_MTLS_TENANT_URI"),
                (scopes.is_some(), "KMS_MTLS_SCOPES"),
                (require_pq.is_some(), "KMS_TLS_REQUIRE_PQ"),
            ] {
                if set {
                    return Err(err(
                        name,
                        "needs TLS: set KMS_TLS_CERT_FILE and KMS_TLS_KEY_FILE",
                    ));
                }
            }
            None
        }
        (Some(_), None) => {
            return Err(err(
                "KMS_TLS_KEY_FILE",
                "must be set with KMS_TLS_CERT_FILE",
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "KMS_TLS_CERT_FILE",
                "must be set with KMS_TLS_KEY_FILE",
            ))
        }
        (Some(cert_file), Some(key_file)) => {
            if crl.is_some() && ca.is_none() {
                return Err(err(
                    "KMS_TLS_CLIENT_CRL_FILE",
                    "needs KMS_TLS_CLIENT_CA_FILE: it revokes client certificates of those CAs",
                ));
            }
            let mtls = match (&ca, uri) {
                (None, None) => {
                    if require {
                        return Err(err("KMS_TLS_REQUIRE_CLIENT_CERT", "needs KMS_TLS_CLIENT_CA_FILE"));
                    }
                    if scopes.is_some() {
                        return Err(err("KMS_MTLS_SCOPES", "needs KMS_MTLS_TENANT_URI"));
                    }
                    None
                }
                (Some(_), None) => {
                    return Err(err(
                        "KMS_MTLS_TENANT_URI",
                        "must be set with KMS_TLS_CLIENT_CA_FILE: it maps a client certificate to a tenant (e.g. spiffe://example.org/tenant/{tenant})",
                    ))
                }
                (None, Some(_)) => {
                    return Err(err("KMS_TLS_CLIENT_CA_FILE", "must be set with KMS_MTLS_TENANT_URI"))
                }
                (Some(_), Some(u)) => {
                    let sc = crate::auth::Scopes::parse(scopes.as_deref().unwrap_or(DEFAULT_MTLS_SCOPES))
                        .map_err(|e| err("KMS_MTLS_SCOPES", e))?;
                    Some(MtlsRule::parse(&u, sc).map_err(|e| err("KMS_MTLS_TENANT_URI", e))?)
                }
            };
            Some(TlsSettings {
                cert_file,
                key_file,
                client_ca_file: ca,
                client_crl_file: crl,
                require_client_cert: require,
                mtls,
                require_pq_kx: require_pq.unwrap_or(false),
            })
        }
    };
    Ok(Loaded {
        admission,
        ingress,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(e: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        load(
            AdmissionFile::default(),
            None,
            IngressFile::default(),
            TlsFile::default(),
            &env(e),
            "ron-kms.toml",
        )
    }

    #[test]
    fn defaults() {
        let l = run(&[]).unwrap();
        assert_eq!(l.admission.inflight, AdmissionConfig::default().inflight);
        assert_eq!(l.ingress, Limits::default());
        assert!(l.tls.is_none());
    }

    #[test]
    fn env_overrides_and_names_the_field() {
        let l = run(&[
            ("KMS_MAX_INFLIGHT_SIGN", "8"),
            ("KMS_TENANT_SHARE_MIN", "0.1"),
            ("KMS_TENANT_RPS", "100"),
            ("KMS_TENANT_LIMITS", "payments:weight=2,rps=500; ci:rps=0"),
            ("KMS_HEADER_TIMEOUT_MS", "1500"),
        ])
        .unwrap();
        assert_eq!(l.admission.inflight[0], 8);
        assert_eq!(l.admission.share_min, 0.1);
        assert_eq!(l.admission.tenant_rps, Some(100.0));
        assert_eq!(l.admission.tenants["payments"].weight, 2.0);
        assert_eq!(l.admission.tenants["payments"].rps, Some(500.0));
        assert_eq!(l.admission.tenants["ci"].rps, None);
        assert_eq!(l.ingress.header_timeout, Duration::from_millis(1500));
        let l = run(&[
            ("KMS_TENANT_RPS", "100"),
            ("KMS_TENANT_LIMITS", "heavy:weight=3"),
        ])
        .unwrap();
        assert_eq!(
            l.admission.tenants["heavy"].rps,
            Some(100.0),
            "a weight alone keeps the default cap"
        );
        for (k, v) in [
            ("KMS_MAX_INFLIGHT_SIGN", "0"),
            ("KMS_MAX_INFLIGHT_VERIFY", "many"),
            ("KMS_TENANT_SHARE_MIN", "2"),
            ("KMS_TENANT_LIMITS", "payments:speed=2"),
            ("KMS_TENANT_LIMITS", "Bad:rps=1"),
            ("KMS_IDLE_TIMEOUT_MS", "0"),
            ("KMS_TLS_CERT_FILE", "/x.pem"),
            ("KMS_MTLS_TENANT_URI", "spiffe://x/{tenant}"),
        ] {
            let e = run(&[(k, v)])
                .err()
                .unwrap_or_else(|| panic!("{k}={v} accepted"));
            assert!(e.to_string().contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn tls_settings_come_in_sets() {
        let l = run(&[
            ("KMS_TLS_CERT_FILE", "/c.pem"),
            ("KMS_TLS_KEY_FILE", "/k.pem"),
        ])
        .unwrap();
        let t = l.tls.unwrap();
        assert!(t.mtls.is_none() && t.client_ca_file.is_none());
        let e = run(&[
            ("KMS_TLS_CERT_FILE", "/c.pem"),
            ("KMS_TLS_KEY_FILE", "/k.pem"),
            ("KMS_TLS_CLIENT_CA_FILE", "/ca.pem"),
        ])
        .err()
        .unwrap();
        assert!(e.to_string().contains("KMS_MTLS_TENANT_URI"), "{e}");
        let l = run(&[
            ("KMS_TLS_CERT_FILE", "/c.pem"),
            ("KMS_TLS_KEY_FILE", "/k.pem"),
            ("KMS_TLS_CLIENT_CA_FILE", "/ca.pem"),
            (
                "KMS_MTLS_TENANT_URI",
                "spiffe://ron-kms.test/tenant/{tenant}",
            ),
        ])
        .unwrap();
        let rule = l.tls.unwrap().mtls.unwrap();
        assert_eq!(
            rule.tenant_of("spiffe://ron-kms.test/tenant/payments")
                .as_deref(),
            Some("payments")
        );
        assert!(!rule.scopes.contains(crate::auth::Scope::Admin));
    }

    #[test]
    fn crl_file_needs_the_client_ca() {
        let mtls = [
            ("KMS_TLS_CERT_FILE", "/c.pem"),
            ("KMS_TLS_KEY_FILE", "/k.pem"),
            ("KMS_TLS_CLIENT_CA_FILE", "/ca.pem"),
            (
                "KMS_MTLS_TENANT_URI",
                "spiffe://ron-kms.test/tenant/{tenant}",
            ),
        ];
        let mut e = mtls.to_vec();
        e.push(("KMS_TLS_CLIENT_CRL_FILE", "/crl.pem"));
        let t = run(&e).unwrap().tls.unwrap();
        assert_eq!(t.client_crl_file, Some(PathBuf::from("/crl.pem")));
        assert!(run(&mtls).unwrap().tls.unwrap().client_crl_file.is_none());

        // Without the CA bundle it revokes nothing: refused, named.
        let e = run(&[
            ("KMS_TLS_CERT_FILE", "/c.pem"),
            ("KMS_TLS_KEY_FILE", "/k.pem"),
            ("KMS_TLS_CLIENT_CRL_FILE", "/crl.pem"),
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("KMS_TLS_CLIENT_CRL_FILE"), "{e}");
        assert!(e.contains("needs KMS_TLS_CLIENT_CA_FILE"), "{e}");
        // Without TLS at all.
        let e = run(&[("KMS_TLS_CLIENT_CRL_FILE", "/crl.pem")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("KMS_TLS_CLIENT_CRL_FILE"), "{e}");
        assert!(e.contains("needs TLS"), "{e}");
    }

    #[test]
    fn crl_file_from_the_file_and_env_wins() {
        let tls: TlsFile = toml::from_str(
            r#"
            cert_file = "/c.pem"
            key_file = "/k.pem"
            client_ca_file = "/ca.pem"
            client_crl_file = "/file-crl.pem"
            mtls_tenant_uri = "spiffe://ron-kms.test/tenant/{tenant}"
            "#,
        )
        .unwrap();
        let load_with = |e: &[(&str, &str)]| {
            load(
                AdmissionFile::default(),
                None,
                IngressFile::default(),
                tls.clone(),
                &env(e),
                "ron-kms.toml",
            )
            .unwrap()
            .tls
            .unwrap()
            .client_crl_file
        };
        assert_eq!(load_with(&[]), Some(PathBuf::from("/file-crl.pem")));
        assert_eq!(
            load_with(&[("KMS_TLS_CLIENT_CRL_FILE", "/env-crl.pem")]),
            Some(PathBuf::from("/env-crl.pem"))
        );
        // A file with a CRL but no CA bundle is refused like the env.
        let mut no_ca = tls.clone();
        no_ca.client_ca_file = None;
        no_ca.mtls_tenant_uri = None;
        let e = load(
            AdmissionFile::default(),
            None,
            IngressFile::default(),
            no_ca,
            &env(&[]),
            "ron-kms.toml",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("KMS_TLS_CLIENT_CRL_FILE"), "{e}");
    }
}
