//! How the client commands print. Scripts get JSON: always with `--output
//! json`, and by default whenever stdout is not a terminal, so pipelines
//! keep working unchanged. People get a short form: by default on a
//! terminal, or anywhere with `--output table` — a key's name, algorithm,
//! versions and their states, and a fingerprint of each public key instead
//! of the key itself (an ML-DSA-87 SPKI is 2.6 KB of base64).
//!
//! A fingerprint is `sha256:` and the first 16 hex digits of SHA-256 over
//! the version's DER SubjectPublicKeyInfo (for a hybrid key: over its
//! components' SPKIs, in order); `openssl pkey -pubin -outform DER | sha256sum`
//! of the PEM that `keys get --pem` prints gives the same digits.
use std::fmt::Write as _;
use std::io::IsTerminal as _;

use base64::Engine as _;
use ron_kms::proto::*;

use super::Failure;

/// `--output`: where the human form is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// The short form on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// JSON, always.
    Json,
    /// The short form, always.
    Table,
}

impl Output {
    fn human(self) -> bool {
        match self {
            Output::Json => false,
            Output::Table => true,
            Output::Auto => std::io::stdout().is_terminal(),
        }
    }
}

/// A response printed either way.
pub(crate) trait Human: serde::Serialize {
    /// The short form, ending in a newline.
    fn human(&self) -> String;
}

/// Print `v` as `out` says.
pub(crate) fn print(out: Output, v: &impl Human) -> Result<(), Failure> {
    if out.human() {
        print!("{}", v.human());
    } else {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

/// Print `v` as JSON whatever `--output` says (`keys get --pem`: the PEM
/// is what was asked for, and it is in the JSON).
pub(crate) fn print_json(v: &impl serde::Serialize) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `sha256:` and 16 hex digits over `der` ([module docs](self)).
pub(crate) fn fingerprint(der: &[&[u8]]) -> String {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for d in der {
        h.update(d);
    }
    format!("sha256:{}", &hex::encode(h.finish().as_ref())[..16])
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(ms: i64) -> String {
    let (year, month, day, h, m, s) = ron_kms::telemetry::civil_utc(ms);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
}

fn version_fingerprint(v: &KeyVersion) -> String {
    if !v.public_key_der.is_empty() {
        fingerprint(&[&v.public_key_der])
    } else if !v.components.is_empty() {
        let parts: Vec<&[u8]> = v.components.iter().map(|c| &c.public_key_der[..]).collect();
        fingerprint(&parts)
    } else {
        "-".into()
    }
}

fn key_lines(k: &Key) -> String {
    let mut s = format!(
        "{}  {} ({}), primary v{}\n",
        k.name, k.algorithm, k.purpose, k.primary_version
    );
    if k.min_decryption_version > 1 || k.min_encryption_version > 0 || k.deletion_allowed {
        let _ = writeln!(
            s,
            "  settings: min_decryption_version {}, min_encryption_version {}, deletion {}",
            k.min_decryption_version,
            k.min_encryption_version,
            if k.deletion_allowed {
                "allowed"
            } else {
                "not allowed"
            }
        );
    }
    for v in &k.versions {
        let _ = writeln!(
            s,
            "  v{:<3} {:<9} {}  {}",
            v.version,
            v.state,
            utc(v.created_at_ms),
            version_fingerprint(v)
        );
    }
    s
}

fn one_key(k: &Option<Key>) -> String {
    k.as_ref().map(key_lines).unwrap_or_default()
}

impl Human for CreateKeyResponse {
    fn human(&self) -> String {
        one_key(&self.key)
    }
}

impl Human for GetKeyResponse {
    fn human(&self) -> String {
        one_key(&self.key)
    }
}

impl Human for SetKeyVersionStateResponse {
    fn human(&self) -> String {
        one_key(&self.key)
    }
}

impl Human for UpdateKeyResponse {
    fn human(&self) -> String {
        one_key(&self.key)
    }
}

impl Human for DeleteKeyResponse {
    fn human(&self) -> String {
        format!(
            "deleted {} ({} versions destroyed)\n",
            self.name, self.destroyed_versions
        )
    }
}

impl Human for RotateKeyResponse {
    fn human(&self) -> String {
        format!("rotated: new primary {}\n{}", self.kid, one_key(&self.key))
    }
}

/// `keys list`: one row per key.
pub(crate) struct KeyList(pub Vec<Key>);

impl serde::Serialize for KeyList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Human for KeyList {
    fn human(&self) -> String {
        let w = self
            .0
            .iter()
            .map(|k| k.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let mut s = format!(
            "{:<w$}  {:<26} {:<8} VERSIONS\n",
            "NAME", "ALGORITHM", "PRIMARY"
        );
        for k in &self.0 {
            let states: Vec<String> = k
                .versions
                .iter()
                .map(|v| format!("v{} {}", v.version, v.state))
                .collect();
            let _ = writeln!(
                s,
                "{:<w$}  {:<26} v{:<7} {}",
                k.name,
                k.algorithm,
                k.primary_version,
                states.join(", ")
            );
        }
        s
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Human for SignResponse {
    fn human(&self) -> String {
        format!(
            "signed with {} ({}), {} bytes:\n{}\n",
            self.kid,
            self.algorithm,
            self.signature.len(),
            b64(&self.signature)
        )
    }
}

impl Human for VerifyResponse {
    fn human(&self) -> String {
        if self.valid {
            let kind = match self.signature_kind.as_str() {
                "" => String::new(),
                k => format!(", {k}"),
            };
            format!("valid: {} ({}{kind})\n", self.kid, self.algorithm)
        } else {
            format!("NOT valid under {}\n", self.kid)
        }
    }
}

impl Human for MacResponse {
    fn human(&self) -> String {
        format!(
            "mac by {} ({}), {} bytes:\n{}\n",
            self.kid,
            self.algorithm,
            self.mac.len(),
            b64(&self.mac)
        )
    }
}

impl Human for VerifyMacResponse {
    fn human(&self) -> String {
        if self.valid {
            format!("valid: {} ({})\n", self.kid, self.algorithm)
        } else {
            format!("NOT valid under {}\n", self.kid)
        }
    }
}

impl Human for WrapResponse {
    fn human(&self) -> String {
        format!(
            "wrapped under {} ({}), {} bytes:\n{}\n",
            self.kid,
            self.algorithm,
            self.ciphertext.len(),
            b64(&self.ciphertext)
        )
    }
}

impl Human for RevokeTokenResponse {
    fn human(&self) -> String {
        match &self.token {
            Some(t) => format!(
                "revoked token {} (tenant {}) at {}\n",
                t.id,
                t.tenant,
                t.revoked_at_ms.map(utc).unwrap_or_else(|| "-".into())
            ),
            None => String::new(),
        }
    }
}

/// `tokens list`: the rows as they are (JSON), and a table of them.
pub(crate) struct TokenList<'a, T>(pub &'a [T]);

impl<T: serde::Serialize> serde::Serialize for TokenList<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<T: serde::Serialize> Human for TokenList<'_, T> {
    fn human(&self) -> String {
        let field = |t: &serde_json::Value, k: &str| match &t[k] {
            serde_json::Value::String(s) if !s.is_empty() => s.clone(),
            serde_json::Value::Array(a) if !a.is_empty() => a
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::Number(n) if n.as_i64().is_some_and(|v| v > 0) => {
                n.as_i64().map(utc).unwrap_or_default()
            }
            _ => "-".into(),
        };
        let mut s = format!(
            "{:<26} {:<12} {:<40} {:<23} {}\n",
            "ID", "TENANT", "SCOPES", "EXPIRES", "REVOKED"
        );
        for t in self.0 {
            let t = serde_json::to_value(t).unwrap_or_default();
            let _ = writeln!(
                s,
                "{:<26} {:<12} {:<40} {:<23} {}",
                field(&t, "id"),
                field(&t, "tenant"),
                field(&t, "scopes"),
                field(&t, "expires_at_ms"),
                field(&t, "revoked_at_ms"),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // 2000-02-29 12:34:56 UTC, a leap day
        assert_eq!(utc(951_827_696_000), "2000-02-29 12:34:56 UTC");
        // 2026-12-07 16:20:01 UTC
        assert_eq!(utc(1_796_660_401_000), "2026-12-07 16:20:01 UTC");
    }

    #[test]
    fn fingerprints_are_the_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea…
        assert_eq!(fingerprint(&[b"abc"]), "sha256:ba7816bf8f01cfea");
        assert_eq!(fingerprint(&[b"a", b"bc"]), "sha256:ba7816bf8f01cfea");
    }
}
