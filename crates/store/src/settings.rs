//! Named storage settings: `[stores.NAME]` in `sluice.toml`, layered with a user file and
//! `SLUICE_*` variables, so that code names a store (`store://lake/trips/`) and never
//! carries an endpoint or a credential.
//!
//! ```toml
//! result_store = "store://lake/sluice/"      # where checkpoints go by default
//! run_store = ".sluice/"                     # where run records go by default
//!
//! [stores.lake]
//! url = "s3://trips/raw"                     # a bucket, or a prefix inside one
//! endpoint = "http://127.0.0.1:9000"         # any object_store option of the scheme
//! region = "us-east-1"
//! allow_http = true
//! access_key_id = { env = "LAKE_KEY_ID" }    # credentials by reference
//! secret_access_key = { env = "LAKE_SECRET" }
//!
//! [stores.archive]
//! url = "s3://archive"                       # a whole bucket: plain s3://archive/… too
//! profile = "archive"                        # ~/.aws/credentials [archive]
//! max_retries = 8                            # Sluice's retry policy
//! retry_timeout = "2m"
//! ```
//!
//! Layers, highest first: what code or the command line passes explicitly, `SLUICE_*`
//! variables (`SLUICE_RESULT_STORE`, `SLUICE_RUN_STORE`, `SLUICE_STORES__LAKE__REGION`),
//! the project's file (`$SLUICE_CONFIG`, else `sluice.toml` in the working directory or
//! the nearest parent that has one), the user's file (`$SLUICE_USER_CONFIG`, else
//! `sluice/sluice.toml` in the platform's config directory), then defaults. Every value
//! remembers where it came from ([`Settings::origin`]).
//!
//! A store that names no credentials (neither a key nor a profile) keeps the process's
//! credential chain: the `AWS_*` variables (or GCS' and Azure's), then instance
//! metadata; the file's options are applied on top. A store that names credentials
//! starts from nothing but its own settings, so one process can read from one endpoint
//! and write to another.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::SettingsError;
use crate::redact::redact;
use crate::{RetryPolicy, StoreBuilder, StoreError};

/// The scheme of a named store's locations: `store://NAME/path`.
pub const NAMED_SCHEME: &str = "store";
/// The variable naming the project's settings file (instead of looking for `sluice.toml`).
pub const CONFIG_ENV: &str = "SLUICE_CONFIG";
/// The variable naming the user's settings file; empty for none.
pub const USER_CONFIG_ENV: &str = "SLUICE_USER_CONFIG";
/// The project file looked for in the working directory and its parents.
pub const PROJECT_FILE: &str = "sluice.toml";

/// Options Sluice reads itself (its retry policy, AWS profiles); every other key of a
/// store is an option of object_store's builder for the URL's scheme.
const SLUICE_OPTIONS: [&str; 3] = ["max_retries", "retry_timeout", "profile"];

/// A setting's value: written out, or read from an environment variable when the store
/// is opened (`{ env = "NAME" }`), which is how credentials should be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    /// The value of an environment variable, read when the store is opened.
    Env {
        /// The variable's name.
        env: String,
    },
    /// A flag.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A number.
    Float(f64),
    /// Text.
    Text(String),
}

impl SettingValue {
    /// The value as object_store takes it, reading a referenced variable.
    fn text(&self) -> std::result::Result<String, String> {
        Ok(match self {
            Self::Env { env } => return std::env::var(env).map_err(|_| env.clone()),
            Self::Bool(b) => b.to_string(),
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Text(t) => t.clone(),
        })
    }
}

/// One named store: a URL (a bucket, a prefix in one, a directory) and its options.
///
/// ```
/// use sluice_store::{SettingValue, StoreSettings};
/// let lake = StoreSettings::new("s3://trips/raw")
///     .with_option("endpoint", SettingValue::Text("http://127.0.0.1:9000".into()))
///     .with_option("secret_access_key", SettingValue::Env { env: "LAKE_SECRET".into() });
/// assert_eq!(lake.url, "s3://trips/raw");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreSettings {
    /// The store's root: `s3://bucket`, `s3://bucket/prefix`, `https://host/base`, a path.
    pub url: String,
    /// Options: object_store's keys for the URL's scheme (`endpoint`, `region`,
    /// `allow_http`, `timeout`, `access_key_id`, …), and Sluice's `max_retries`,
    /// `retry_timeout` and `profile` (an AWS shared-credentials profile).
    #[serde(flatten)]
    pub options: BTreeMap<String, SettingValue>,
}

impl StoreSettings {
    /// A store at `url` with no options.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            options: BTreeMap::new(),
        }
    }

    /// Sets an option.
    pub fn with_option(mut self, key: impl Into<String>, value: SettingValue) -> Self {
        self.options.insert(key.into(), value);
        self
    }

    /// Whether the store names its own credentials (a key, a token or a profile), and
    /// so does not take the process's credential chain.
    fn names_credentials(&self) -> bool {
        self.options
            .keys()
            .any(|k| k == "profile" || is_credential(k))
    }

    /// Where the store's credentials come from, in words (`sluice stores ls`).
    ///
    /// ```
    /// use sluice_store::{SettingValue, StoreSettings};
    /// let store = StoreSettings::new("s3://b").with_option("profile", SettingValue::Text("dev".into()));
    /// assert_eq!(store.credentials(), "profile dev");
    /// assert_eq!(StoreSettings::new("s3://b").credentials(), "the process's chain");
    /// ```
    pub fn credentials(&self) -> String {
        if let Some(SettingValue::Text(profile)) = self.options.get("profile") {
            return format!("profile {profile}");
        }
        let named: Vec<String> = self
            .options
            .iter()
            .filter(|(k, _)| is_credential(k))
            .map(|(k, v)| match v {
                SettingValue::Env { env } => format!("{k} from ${env}"),
                _ => format!("{k} written out"),
            })
            .collect();
        if named.is_empty() {
            "the process's chain".into()
        } else {
            named.join(", ")
        }
    }

    /// The endpoint the store sets, if any.
    pub fn endpoint(&self) -> Option<String> {
        self.options
            .iter()
            .find(|(k, _)| {
                matches!(
                    k.as_str(),
                    "endpoint" | "aws_endpoint" | "endpoint_url" | "aws_endpoint_url"
                )
            })
            .and_then(|(_, v)| v.text().ok())
    }
}

/// An option key that holds a credential (written out, it is a secret in the file).
fn is_credential(key: &str) -> bool {
    let key = ["aws_", "google_", "azure_", "azure_storage_"]
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key);
    matches!(
        key,
        "access_key_id"
            | "secret_access_key"
            | "session_token"
            | "token"
            | "access_key"
            | "account_key"
            | "master_key"
            | "client_secret"
            | "sas_key"
            | "sas_token"
            | "service_account_key"
            | "bearer_token"
            | "password"
    )
}

/// An option key whose written-out value is secret: shown redacted, warned about.
fn is_secret(key: &str) -> bool {
    is_credential(key) && !key.ends_with("access_key_id")
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A settings file.
    File(PathBuf),
    /// An environment variable.
    Variable(String),
    /// Code (or the command line) passed it explicitly.
    Code,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Variable(name) => write!(f, "${name}"),
            Self::Code => f.write_str("code"),
        }
    }
}

/// Which layers [`Settings::load_from`] reads.
///
/// ```
/// let sources = sluice_store::SettingsSources::none().with_project_file("/etc/sluice/sluice.toml");
/// assert!(sources.user_file.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsSources {
    /// The user's file (lowest), if any.
    pub user_file: Option<PathBuf>,
    /// The project's file, if any.
    pub project_file: Option<PathBuf>,
    /// Whether `SLUICE_*` variables are read (above both files).
    pub environment: bool,
}

impl SettingsSources {
    /// No file and no variable: only what code passes.
    pub fn none() -> Self {
        Self::default()
    }

    /// The layers of this process: `$SLUICE_USER_CONFIG` or the platform's config
    /// directory, `$SLUICE_CONFIG` or the nearest `sluice.toml`, and the variables.
    pub fn discover() -> Self {
        let user_file = match std::env::var_os(USER_CONFIG_ENV) {
            Some(path) if path.is_empty() => None,
            Some(path) => Some(PathBuf::from(path)),
            None => dirs::config_dir()
                .map(|dir| dir.join("sluice").join(PROJECT_FILE))
                .filter(|path| path.is_file()),
        };
        let project_file = match std::env::var_os(CONFIG_ENV) {
            Some(path) if !path.is_empty() => Some(PathBuf::from(path)),
            _ => std::env::current_dir().ok().and_then(|cwd| {
                cwd.ancestors()
                    .map(|dir| dir.join(PROJECT_FILE))
                    .find(|path| path.is_file())
            }),
        };
        Self {
            user_file,
            project_file,
            environment: true,
        }
    }

    /// Reads this project file.
    pub fn with_project_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.project_file = Some(path.into());
        self
    }

    /// Reads this user file.
    pub fn with_user_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.user_file = Some(path.into());
        self
    }

    /// Reads the `SLUICE_*` variables, or not.
    pub fn with_environment(mut self, read: bool) -> Self {
        self.environment = read;
        self
    }
}

/// The shape of a settings file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layered {
    #[serde(default)]
    stores: BTreeMap<String, StoreSettings>,
    result_store: Option<String>,
    run_store: Option<String>,
}

/// Named stores and default locations, from every layer, each value with its origin.
///
/// ```
/// use sluice_store::Settings;
/// let settings = Settings::from_toml(r#"
///     result_store = "store://lake/sluice/"
///     [stores.lake]
///     url = "s3://trips/raw"
///     region = "eu-west-1"
/// "#)?;
/// assert_eq!(settings.result_store(), Some("store://lake/sluice/"));
/// assert_eq!(settings.store("lake").unwrap().url, "s3://trips/raw");
/// # Ok::<(), sluice_store::SettingsError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Settings {
    stores: BTreeMap<String, StoreSettings>,
    result_store: Option<String>,
    run_store: Option<String>,
    /// Where each value came from, by dotted key (`stores.lake.region`).
    origins: BTreeMap<String, Origin>,
    /// The files read, lowest layer first.
    files: Vec<PathBuf>,
    /// Stores a client could not send (a secret written out), by name: their key and
    /// its origin, for the error when a task here opens one.
    withheld: BTreeMap<String, (String, String)>,
}

/// The settings as they travel to a cluster.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Wire {
    stores: BTreeMap<String, StoreSettings>,
    /// Stores left out, by name: the key written out and where.
    withheld: BTreeMap<String, (String, String)>,
}

impl Settings {
    /// No stores and no defaults.
    pub fn empty() -> Self {
        Self::default()
    }

    /// This process's settings: [`SettingsSources::discover`]'s layers.
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_from(&SettingsSources::discover())
    }

    /// The settings of the given layers.
    pub fn load_from(sources: &SettingsSources) -> Result<Self, SettingsError> {
        let mut figment = Figment::new();
        let mut files = Vec::new();
        for (file, variable) in [
            (&sources.user_file, USER_CONFIG_ENV),
            (&sources.project_file, CONFIG_ENV),
        ] {
            let Some(file) = file else { continue };
            let text = std::fs::read_to_string(file).map_err(|e| SettingsError::Unreadable {
                file: file.clone(),
                variable: variable.to_string(),
                reason: e.to_string(),
            })?;
            check_syntax(file, &text)?;
            figment = figment.merge(Toml::file_exact(file));
            files.push(file.clone());
        }
        if sources.environment {
            figment = figment.merge(
                Env::prefixed("SLUICE_")
                    .filter(|key| {
                        // Keys keep the variable's case until figment lowercases them.
                        let key = key.as_str().to_ascii_lowercase();
                        key == "result_store" || key == "run_store" || key.starts_with("stores__")
                    })
                    .split("__"),
            );
        }
        Self::from_figment(&figment, files)
    }

    /// Settings written as TOML in code (their origin is `code`).
    pub fn from_toml(text: &str) -> Result<Self, SettingsError> {
        check_syntax(Path::new("<settings>"), text)?;
        Self::from_figment(&Figment::from(Toml::string(text)), Vec::new())
    }

    fn from_figment(figment: &Figment, files: Vec<PathBuf>) -> Result<Self, SettingsError> {
        let layered: Layered = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            let origin = e
                .metadata
                .as_ref()
                .map(|m| origin_of(m, &key))
                .map_or_else(|| "the settings".to_string(), |o| o.to_string());
            SettingsError::Invalid {
                key: if key.is_empty() {
                    "settings".into()
                } else {
                    key
                },
                origin,
                reason: e.kind.to_string(),
            }
        })?;
        let mut origins = BTreeMap::new();
        let mut note = |key: String| {
            if let Some(meta) = figment.find_metadata(&key) {
                let origin = origin_of(meta, &key);
                origins.insert(key, origin);
            }
        };
        note("result_store".into());
        note("run_store".into());
        for (name, store) in &layered.stores {
            note(format!("stores.{name}.url"));
            for key in store.options.keys() {
                note(format!("stores.{name}.{key}"));
            }
        }
        let mut settings = Self {
            stores: BTreeMap::new(),
            result_store: layered.result_store,
            run_store: layered.run_store,
            origins,
            files,
            withheld: BTreeMap::new(),
        };
        for (name, store) in layered.stores {
            settings.add(name, store)?;
        }
        Ok(settings)
    }

    /// Defines (or replaces) a store in code, above every file and variable.
    ///
    /// ```
    /// use sluice_store::{Settings, StoreSettings};
    /// let settings = Settings::empty().with_store("scratch", StoreSettings::new("memory://scratch"))?;
    /// assert!(settings.store("scratch").is_some());
    /// # Ok::<(), sluice_store::SettingsError>(())
    /// ```
    pub fn with_store(
        mut self,
        name: impl Into<String>,
        store: StoreSettings,
    ) -> Result<Self, SettingsError> {
        let name = name.into();
        self.origins
            .insert(format!("stores.{name}.url"), Origin::Code);
        for key in store.options.keys() {
            self.origins
                .insert(format!("stores.{name}.{key}"), Origin::Code);
        }
        self.add(name, store)?;
        Ok(self)
    }

    /// Sets the default result store in code.
    pub fn with_result_store(mut self, location: impl Into<String>) -> Self {
        self.result_store = Some(location.into());
        self.origins.insert("result_store".into(), Origin::Code);
        self
    }

    /// Sets the default run store in code.
    pub fn with_run_store(mut self, location: impl Into<String>) -> Self {
        self.run_store = Some(location.into());
        self.origins.insert("run_store".into(), Origin::Code);
        self
    }

    /// Validates a store (its name, URL and option keys) and adds it.
    fn add(&mut self, name: String, mut store: StoreSettings) -> Result<(), SettingsError> {
        let origin = |key: &str| self.origin_text(&format!("stores.{name}.{key}"));
        let invalid = |key: &str, reason: String| SettingsError::Invalid {
            key: format!("stores.{name}.{key}"),
            origin: origin(key),
            reason,
        };
        if !valid_name(&name) {
            return Err(invalid(
                "url",
                format!(
                    "`{name}` cannot name a store: use lowercase letters, digits, `-` and \
                     single `_`, starting with a letter or digit"
                ),
            ));
        }
        // A relative path in a file is relative to that file, as Cargo's are.
        if !store.url.contains("://")
            && let Some(Origin::File(file)) = self.origins.get(&format!("stores.{name}.url"))
            && let Some(dir) = file.parent()
            && Path::new(&store.url).is_relative()
        {
            store.url = dir.join(&store.url).display().to_string();
        }
        let url = crate::resolve_url(&store.url).map_err(|e| invalid("url", e.to_string()))?;
        let scheme = url.scheme();
        if scheme == NAMED_SCHEME {
            return Err(invalid(
                "url",
                "a store's URL is where it is (s3://bucket/prefix, a path), not another store"
                    .into(),
            ));
        }
        for (key, value) in &store.options {
            check_option(scheme, key).map_err(|reason| invalid(key, reason))?;
            if let SettingValue::Env { env } = value
                && env.is_empty()
            {
                return Err(invalid(key, "the variable's name is empty".into()));
            }
            if is_secret(key) && !matches!(value, SettingValue::Env { .. }) {
                tracing::warn!(
                    store = %name,
                    key = %key,
                    origin = %origin(key),
                    "a secret is written in the settings; prefer {key} = {{ env = \"VARIABLE\" }} or a profile"
                );
            }
        }
        store.url = url.to_string();
        self.stores.insert(name, store);
        Ok(())
    }

    /// The store named `name`.
    pub fn store(&self, name: &str) -> Option<&StoreSettings> {
        self.stores.get(name)
    }

    /// Every named store, by name.
    pub fn stores(&self) -> impl Iterator<Item = (&str, &StoreSettings)> {
        self.stores.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// The default result store, if a layer sets one.
    pub fn result_store(&self) -> Option<&str> {
        self.result_store.as_deref()
    }

    /// The default run store, if a layer sets one.
    pub fn run_store(&self) -> Option<&str> {
        self.run_store.as_deref()
    }

    /// Where a value (`result_store`, `stores.lake.region`) came from.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }

    fn origin_text(&self, key: &str) -> String {
        self.origin(key)
            .map_or_else(|| "the settings".to_string(), Origin::to_string)
    }

    /// The settings files read, lowest layer first.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The named store of a `store://NAME/…` URL.
    pub(crate) fn named(&self, url: &Url) -> Result<(&str, &StoreSettings), SettingsError> {
        let name = url.host_str().unwrap_or_default();
        if let Some((key, origin)) = self.withheld.get(name) {
            return Err(SettingsError::LiteralSecret {
                store: name.to_string(),
                key: key.clone(),
                origin: origin.clone(),
            });
        }
        self.stores
            .get_key_value(name)
            .map(|(n, s)| (n.as_str(), s))
            .ok_or_else(|| SettingsError::UnknownStore {
                location: redact(url),
                name: name.to_string(),
                known: self.stores.keys().cloned().collect(),
            })
    }

    /// The store defined for the whole bucket (or host) of `url`, if one is: its
    /// options apply to plain URLs of that bucket.
    pub(crate) fn for_bucket(
        &self,
        url: &Url,
    ) -> Result<Option<(&str, &StoreSettings)>, SettingsError> {
        if matches!(url.scheme(), "file" | "memory" | NAMED_SCHEME) {
            return Ok(None);
        }
        let key = crate::store_key(url);
        let found: Vec<_> = self
            .stores
            .iter()
            .filter(|(_, s)| {
                Url::parse(&s.url).is_ok_and(|u| {
                    crate::store_key(&u) == key && u.path().trim_matches('/').is_empty()
                })
            })
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [(name, store)] => Ok(Some((name.as_str(), store))),
            many => Err(SettingsError::Ambiguous {
                url: key,
                names: many.iter().map(|(n, _)| n.to_string()).collect(),
            }),
        }
    }

    /// Where a `store://NAME/path` location is: the store's URL joined with the path.
    pub(crate) fn target(&self, url: &Url) -> Result<Url, SettingsError> {
        let (_, store) = self.named(url)?;
        let mut target = Url::parse(&store.url).map_err(|e| SettingsError::Invalid {
            key: format!("stores.{}.url", url.host_str().unwrap_or_default()),
            origin: "the settings".into(),
            reason: e.to_string(),
        })?;
        let base = target.path().trim_end_matches('/').to_string();
        let rest = url.path().trim_start_matches('/');
        target.set_path(&format!("{base}/{rest}"));
        target.set_query(url.query());
        Ok(target)
    }

    /// The builder of a named store's object store, for its bucket or host, with its
    /// referenced variables and profile read now.
    pub(crate) fn builder(
        &self,
        name: &str,
        store: &StoreSettings,
    ) -> Result<StoreBuilder, StoreError> {
        let url = Url::parse(&store.url).map_err(|e| StoreError::InvalidUrl {
            location: store.url.clone(),
            reason: e.to_string(),
        })?;
        let mut builder = if store.names_credentials() {
            StoreBuilder::from_url(&url)
        } else {
            StoreBuilder::from_env(&url)
        };
        let mut retry = RetryPolicy::default();
        for (key, value) in &store.options {
            let text = value
                .text()
                .map_err(|variable| SettingsError::UnsetVariable {
                    store: name.to_string(),
                    key: key.clone(),
                    variable,
                    origin: self.origin_text(&format!("stores.{name}.{key}")),
                })?;
            let invalid = |reason: String| SettingsError::Invalid {
                key: format!("stores.{name}.{key}"),
                origin: self.origin_text(&format!("stores.{name}.{key}")),
                reason,
            };
            match key.as_str() {
                "max_retries" => {
                    retry.max_retries = text.parse().map_err(|_| {
                        invalid(format!("expected a number of retries, found {text:?}"))
                    })?;
                }
                "retry_timeout" => {
                    retry.timeout = humantime::parse_duration(&text).map_err(|e| {
                        invalid(format!("expected a duration such as 30s or 2m: {e}"))
                    })?;
                }
                "profile" => {
                    for (key, value) in profile_credentials(name, &text)? {
                        builder = builder.with_option(key, value);
                    }
                }
                _ => builder = builder.with_option(key.clone(), text),
            }
        }
        Ok(builder.with_retry(retry))
    }

    /// `url` as run records and cache keys name it: where it really is, never an alias.
    /// `store://lake/x.parquet` becomes the store's URL joined with the path
    /// (`s3://trips/raw/x.parquet`) and, when the store sets an endpoint, the object's
    /// path-style address there (`http://10.0.0.5:9000/trips/raw/x.parquet`), so two
    /// endpoints whose buckets share a name never share a key. Appending to a
    /// canonical directory gives the canonical object.
    pub fn canonical(&self, url: &Url) -> String {
        let (target, store) = if url.scheme() == NAMED_SCHEME {
            match (self.target(url), self.named(url)) {
                (Ok(target), Ok((_, store))) => (target, Some(store)),
                _ => return redact(url),
            }
        } else {
            (
                url.clone(),
                self.for_bucket(url).ok().flatten().map(|(_, s)| s),
            )
        };
        match store.and_then(StoreSettings::endpoint) {
            Some(endpoint) if matches!(target.scheme(), "s3" | "s3a") => format!(
                "{}/{}{}",
                endpoint.trim_end_matches('/'),
                target.host_str().unwrap_or_default(),
                target.path()
            ),
            _ => redact(&target),
        }
    }

    /// The settings as executors receive them: every store with its options, variables
    /// and profiles by reference. A store with a secret written out does not travel: a
    /// task that opens it there fails naming the key to give by reference instead.
    pub fn to_wire(&self) -> String {
        let mut wire = Wire::default();
        for (name, store) in &self.stores {
            let literal = store
                .options
                .iter()
                .find(|(key, value)| is_secret(key) && !matches!(value, SettingValue::Env { .. }));
            match literal {
                Some((key, _)) => {
                    let origin = self.origin_text(&format!("stores.{name}.{key}"));
                    wire.withheld.insert(name.clone(), (key.clone(), origin));
                }
                None => {
                    wire.stores.insert(name.clone(), store.clone());
                }
            }
        }
        wire.withheld.extend(self.withheld.clone());
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Settings received from a client ([`to_wire`](Self::to_wire)).
    pub fn from_wire(text: &str) -> Result<Self, SettingsError> {
        let wire: Wire = serde_json::from_str(text).map_err(|e| SettingsError::Invalid {
            key: "stores".into(),
            origin: "the client".into(),
            reason: e.to_string(),
        })?;
        let mut settings = Self::empty();
        for (name, store) in wire.stores {
            settings.add(name, store)?;
        }
        settings.withheld = wire.withheld;
        Ok(settings)
    }

    /// The settings as TOML, secrets redacted, each value followed by its origin:
    /// what `sluice config view` prints.
    pub fn view(&self) -> String {
        let mut out = String::new();
        for key in ["result_store", "run_store"] {
            let value = if key == "result_store" {
                &self.result_store
            } else {
                &self.run_store
            };
            if let Some(value) = value {
                out.push_str(&format!(
                    "{key} = {}  # {}\n",
                    quoted(value),
                    self.origin_text(key)
                ));
            }
        }
        for (name, store) in &self.stores {
            out.push_str(&format!("\n[stores.{name}]\n"));
            out.push_str(&self.describe_store(name, store));
        }
        out
    }

    /// A store's settings as TOML lines, secrets redacted, with origins.
    pub fn describe_store(&self, name: &str, store: &StoreSettings) -> String {
        let mut out = format!(
            "url = {}  # {}\n",
            quoted(&store.url),
            self.origin_text(&format!("stores.{name}.url"))
        );
        for (key, value) in &store.options {
            let shown = match value {
                SettingValue::Env { env } => {
                    format!("{{ env = {} }}", quoted(env))
                        + if std::env::var_os(env).is_some() {
                            ""
                        } else {
                            "  # (unset)"
                        }
                }
                _ if is_secret(key) => "\"<redacted>\"".to_string(),
                SettingValue::Text(t) => quoted(t),
                SettingValue::Bool(b) => b.to_string(),
                SettingValue::Int(i) => i.to_string(),
                SettingValue::Float(f) => f.to_string(),
            };
            out.push_str(&format!(
                "{key} = {shown}  # {}\n",
                self.origin_text(&format!("stores.{name}.{key}"))
            ));
        }
        out
    }
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// Where a value came from, from figment's metadata of its provider.
fn origin_of(meta: &figment::Metadata, key: &str) -> Origin {
    match &meta.source {
        Some(figment::Source::File(path)) => Origin::File(path.clone()),
        _ if meta.name.contains("environment") => Origin::Variable(format!(
            "SLUICE_{}",
            key.replace('.', "__").to_ascii_uppercase()
        )),
        _ => Origin::Code,
    }
}

/// Checks TOML syntax first, for an error with a line and a column.
fn check_syntax(file: &Path, text: &str) -> Result<(), SettingsError> {
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let offset = e.span().map_or(0, |span| span.start);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Err(SettingsError::Syntax {
        file: file.to_path_buf(),
        line,
        column,
        reason: e.message().to_string(),
    })
}

/// Store names: what a URL authority and a `SLUICE_STORES__NAME__KEY` variable can carry.
fn valid_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.contains("__")
}

/// Whether `key` is an option of `scheme`'s object store (or one Sluice reads).
fn check_option(scheme: &str, key: &str) -> std::result::Result<(), String> {
    if SLUICE_OPTIONS.contains(&key) {
        return if key == "profile" && !matches!(scheme, "s3" | "s3a") {
            Err("profiles are AWS shared-credentials profiles: for s3:// stores only".into())
        } else {
            Ok(())
        };
    }
    let known = match scheme {
        "file" | "memory" => {
            return Err(format!("{scheme}:// stores take no options"));
        }
        #[cfg(feature = "s3")]
        "s3" | "s3a" => key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok(),
        #[cfg(feature = "gcp")]
        "gs" => key.parse::<object_store::gcp::GoogleConfigKey>().is_ok(),
        #[cfg(feature = "azure")]
        "az" | "abfs" | "abfss" => key.parse::<object_store::azure::AzureConfigKey>().is_ok(),
        #[cfg(feature = "http")]
        "http" | "https" => key.parse::<object_store::ClientConfigKey>().is_ok(),
        other => {
            return Err(format!(
                "the scheme `{other}` is not supported by this build (supported: {})",
                crate::supported_schemes()
            ));
        }
    };
    if known {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not an option of {scheme}:// stores (object_store's keys, as \
             `parse_url_opts` takes them, or max_retries, retry_timeout, profile)"
        ))
    }
}

/// Credentials of an AWS shared-credentials profile (`$AWS_SHARED_CREDENTIALS_FILE`,
/// else `~/.aws/credentials`), as object_store options.
fn profile_credentials(store: &str, profile: &str) -> Result<Vec<(String, String)>, SettingsError> {
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|home| home.join(".aws").join("credentials")))
        .unwrap_or_else(|| PathBuf::from(".aws/credentials"));
    let failed = |reason: String| SettingsError::Profile {
        store: store.to_string(),
        profile: profile.to_string(),
        file: file.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| failed(e.to_string()))?;
    let mut section = None;
    let mut found = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        if section.as_deref() == Some(profile)
            && let Some((key, value)) = line.split_once('=')
        {
            found.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let mut options = Vec::new();
    for (key, option) in [
        ("aws_access_key_id", "access_key_id"),
        ("aws_secret_access_key", "secret_access_key"),
        ("aws_session_token", "session_token"),
    ] {
        if let Some(value) = found.remove(key) {
            options.push((option.to_string(), value));
        }
    }
    if options.len() < 2 {
        return Err(failed(
            "no [PROFILE] section with aws_access_key_id and aws_secret_access_key".into(),
        ));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_project_file_wins_over_the_user_file_and_origins_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let user = write(
            dir.path(),
            "user.toml",
            "run_store = \"/u/runs/\"\nresult_store = \"/u/cache/\"\n[stores.lake]\nurl = \"s3://user-bucket\"\nregion = \"eu-west-1\"\n",
        );
        let project = write(
            dir.path(),
            "sluice.toml",
            "result_store = \"store://lake/cache/\"\n[stores.lake]\nurl = \"s3://trips/raw\"\n",
        );
        let settings = Settings::load_from(
            &SettingsSources::none()
                .with_user_file(&user)
                .with_project_file(&project),
        )
        .unwrap();
        assert_eq!(settings.result_store(), Some("store://lake/cache/"));
        assert_eq!(settings.run_store(), Some("/u/runs/"));
        let lake = settings.store("lake").unwrap();
        assert_eq!(lake.url, "s3://trips/raw");
        // Tables merge key by key: the user's region stays.
        assert_eq!(
            lake.options["region"],
            SettingValue::Text("eu-west-1".into())
        );
        assert_eq!(
            settings.origin("result_store"),
            Some(&Origin::File(project.clone()))
        );
        assert_eq!(
            settings.origin("run_store"),
            Some(&Origin::File(user.clone()))
        );
        assert_eq!(
            settings.origin("stores.lake.url"),
            Some(&Origin::File(project))
        );
        assert_eq!(
            settings.origin("stores.lake.region"),
            Some(&Origin::File(user))
        );
    }

    #[test]
    fn a_malformed_file_is_an_error_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "sluice.toml",
            "[stores.lake]\nurl = \"s3://b\"\nregion = eu\n",
        );
        let err =
            Settings::load_from(&SettingsSources::none().with_project_file(&file)).unwrap_err();
        match &err {
            SettingsError::Syntax { line, column, .. } => assert_eq!((*line, *column), (3, 10)),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("line 3, column 10"), "{err}");
    }

    #[test]
    fn wrong_shapes_and_unknown_options_name_the_key_and_the_file() {
        let err = Settings::from_toml("[stores.lake]\nurl = 3\n").unwrap_err();
        assert!(err.to_string().contains("stores.lake.url"), "{err}");
        let err =
            Settings::from_toml("[stores.lake]\nurl = \"s3://b\"\nregoin = \"x\"\n").unwrap_err();
        assert!(
            matches!(err, SettingsError::Invalid { ref key, .. } if key == "stores.lake.regoin"),
            "{err}"
        );
        let err = Settings::from_toml("[stores.Lake]\nurl = \"s3://b\"\n").unwrap_err();
        assert!(err.to_string().contains("cannot name a store"), "{err}");
        let err = Settings::from_toml("reslt_store = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("reslt_store"), "{err}");
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "sluice.toml",
            "[stores.local]\nurl = \"data/lake\"\n",
        );
        let settings =
            Settings::load_from(&SettingsSources::none().with_project_file(&file)).unwrap();
        let url = Url::parse(&settings.store("local").unwrap().url).unwrap();
        assert_eq!(url.to_file_path().unwrap(), dir.path().join("data/lake"));
    }

    #[test]
    fn named_locations_resolve_under_the_store_url_and_canonical_names_the_endpoint() {
        let settings = Settings::from_toml(
            "[stores.lake]\nurl = \"s3://trips/raw\"\nendpoint = \"http://10.0.0.5:9000\"\n[stores.whole]\nurl = \"s3://archive\"\n",
        )
        .unwrap();
        let url = Url::parse("store://lake/2023/x.parquet").unwrap();
        assert_eq!(
            settings.target(&url).unwrap().as_str(),
            "s3://trips/raw/2023/x.parquet"
        );
        assert_eq!(
            settings.canonical(&url),
            "http://10.0.0.5:9000/trips/raw/2023/x.parquet"
        );
        let plain = Url::parse("s3://archive/y.parquet").unwrap();
        assert_eq!(settings.for_bucket(&plain).unwrap().unwrap().0, "whole");
        assert!(
            settings
                .for_bucket(&Url::parse("s3://trips/raw/x").unwrap())
                .unwrap()
                .is_none()
        );
        let err = settings
            .named(&Url::parse("store://nope/x").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("defined: lake, whole"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_views_and_refused_on_the_wire() {
        let settings = Settings::from_toml(
            "[stores.lake]\nurl = \"s3://b\"\naccess_key_id = \"AKIA-VISIBLE\"\nsecret_access_key = \"hunter2-secret\"\n",
        )
        .unwrap();
        let view = settings.view();
        assert!(!view.contains("hunter2"), "{view}");
        assert!(view.contains("<redacted>"), "{view}");
        // It does not travel: an executor opening it fails naming the key.
        let wire = settings.to_wire();
        assert!(!wire.contains("hunter2"), "{wire}");
        let received = Settings::from_wire(&wire).unwrap();
        let err = received
            .named(&Url::parse("store://lake/x").unwrap())
            .unwrap_err();
        assert!(
            matches!(err, SettingsError::LiteralSecret { ref key, .. } if key == "secret_access_key"),
            "{err}"
        );
        let by_reference = Settings::from_toml(
            "[stores.lake]\nurl = \"s3://b/p\"\nsecret_access_key = { env = \"LAKE_SECRET_UNSET_HERE\" }\n",
        )
        .unwrap();
        let back = Settings::from_wire(&by_reference.to_wire()).unwrap();
        assert_eq!(back.store("lake"), by_reference.store("lake"));
    }

    #[test]
    fn an_unset_variable_is_named_when_the_store_is_opened() {
        let settings = Settings::from_toml(
            "[stores.lake]\nurl = \"s3://b\"\nsecret_access_key = { env = \"SLUICE_TEST_SURELY_UNSET_VARIABLE\" }\n",
        )
        .unwrap();
        let store = settings.store("lake").unwrap();
        let err = settings.builder("lake", store).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("SLUICE_TEST_SURELY_UNSET_VARIABLE"), "{text}");
        assert!(text.contains("stores.lake.secret_access_key"), "{text}");
    }
}
