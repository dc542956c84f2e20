//! Where each setting's value comes from: a flag, else its `KMS_*`
//! variable, else the config file's key, with the name of that place kept
//! for the error message. The section loaders read every setting through
//! [`Src`], so no loader repeats the precedence or the parsing.
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;

use super::{err, parse_bool, ConfigError, Env};

/// One setting's value (if any place gave one) and the name of its place:
/// `--data-dir`, `KMS_DATA_DIR` or `data_dir in /etc/ron-kms.toml`.
pub(super) struct Raw<T> {
    pub value: Option<T>,
    pub origin: String,
}

impl<T> Raw<T> {
    /// Whether it was set, and where: for "only with backend X" checks.
    pub(super) fn given(&self) -> (bool, &str) {
        (self.value.is_some(), &self.origin)
    }

    pub fn is_set(&self) -> bool {
        self.value.is_some()
    }
}

/// The environment and the file one load reads.
pub(super) struct Src<'a> {
    pub env: &'a dyn Env,
    pub fname: &'a str,
}

impl Src<'_> {
    /// `env_name` (its text through `from_env`) if set, else the file's
    /// `key` (typed by TOML already).
    pub fn raw<T>(
        &self,
        env_name: &str,
        key: &str,
        file: Option<T>,
        from_env: impl FnOnce(String) -> T,
    ) -> Raw<T> {
        match self.env.var(env_name) {
            Some(v) => Raw {
                value: Some(from_env(v)),
                origin: env_name.to_string(),
            },
            None => Raw {
                value: file,
                origin: format!("{key} in {}", self.fname),
            },
        }
    }

    /// [`Src::raw`] with a flag in front of it.
    pub fn flagged<T>(
        &self,
        flag: Option<T>,
        flag_name: &str,
        env_name: &str,
        key: &str,
        file: Option<T>,
        from_env: impl FnOnce(String) -> T,
    ) -> Raw<T> {
        match flag {
            Some(v) => Raw {
                value: Some(v),
                origin: flag_name.to_string(),
            },
            None => self.raw(env_name, key, file, from_env),
        }
    }

    /// A text setting.
    pub fn text(&self, env_name: &str, key: &str, file: Option<String>) -> Raw<String> {
        self.raw(env_name, key, file, |s| s)
    }

    /// A path setting.
    pub fn path(&self, env_name: &str, key: &str, file: Option<PathBuf>) -> Raw<PathBuf> {
        self.raw(env_name, key, file, PathBuf::from)
    }

    /// A number within `range`, `default` when unset. A value that does
    /// not parse or is out of range is an error saying what it `must` be.
    #[allow(clippy::too_many_arguments)]
    pub fn number<T: FromStr + PartialOrd>(
        &self,
        env_name: &str,
        key: &str,
        file: Option<T>,
        range: RangeInclusive<T>,
        default: T,
        must: &str,
    ) -> Result<T, ConfigError> {
        let r = self.raw(env_name, key, file.map(Some), |s| {
            s.trim().parse::<T>().ok()
        });
        match r.value {
            None => Ok(default),
            Some(Some(n)) if range.contains(&n) => Ok(n),
            Some(_) => Err(err(r.origin, must)),
        }
    }

    /// A number, unchecked: for settings whose validity depends on others
    /// (a value that does not parse reads as `None` inside `Some`).
    pub fn number_raw<T: FromStr>(
        &self,
        env_name: &str,
        key: &str,
        file: Option<T>,
    ) -> Raw<Option<T>> {
        self.raw(env_name, key, file.map(Some), |s| {
            s.trim().parse::<T>().ok()
        })
    }

    /// A true/false setting (env: `1`/`true`/`yes`/`on` or
    /// `0`/`false`/`no`/`off`, any case).
    pub fn switch(
        &self,
        env_name: &str,
        key: &str,
        file: Option<bool>,
    ) -> Result<Raw<bool>, ConfigError> {
        let r = self.raw(env_name, key, file.map(Some), |s| parse_bool(&s));
        match r.value {
            None => Ok(Raw {
                value: None,
                origin: r.origin,
            }),
            Some(Some(b)) => Ok(Raw {
                value: Some(b),
                origin: r.origin,
            }),
            Some(None) => Err(err(r.origin, "must be true or false")),
        }
    }
}

/// Amnesia mode, and the refusal of settings that would persist something.
pub(super) struct Amnesia {
    pub on: bool,
    pub origin: String,
}

impl Amnesia {
    /// Refuse `setting` (set at `origin`) in amnesia mode, saying `why`.
    pub fn refuse(&self, set: bool, origin: &str, why: &str) -> Result<(), ConfigError> {
        if self.on && set {
            return Err(err(
                origin,
                format!(
                    "conflicts with {}: amnesia mode keeps everything in memory only; {why}",
                    self.origin
                ),
            ));
        }
        Ok(())
    }
}
