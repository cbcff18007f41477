//! The configuration file: the same settings as the `CARDLINK_*` environment variables, in TOML.
//!
//! Precedence, highest first: command-line flag, environment variable, configuration file,
//! built-in default (which runs locally). A file key is its variable's name without `CARDLINK_`,
//! lower-cased, with one level of table allowed for readability: `kafka.bootstrap` and
//! `kafka_bootstrap` both set `CARDLINK_KAFKA_BOOTSTRAP`. Two tables are special:
//! `[kafka.librdkafka]` passes settings to librdkafka (TLS, SASL; `CARDLINK_KAFKA__*` wins over
//! it), and `topic_prefix` / `log_format` feed the bus and the logs. `cardlink config keys`
//! lists every key.
//!
//! The file is validated before anything starts: an unknown key or a value the setting cannot
//! take stops the process with a message naming the file and the key.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The variable (and flag) naming the configuration file.
pub const CONFIG_ENV: &str = "CARDLINK_CONFIG";
const PREFIX: &str = "CARDLINK_";
/// Variables read outside clap (by the bus and the log set-up).
const PASSED_ON: [&str; 2] = ["CARDLINK_TOPIC_PREFIX", "CARDLINK_LOG_FORMAT"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Key { path: String, key: String, message: String },
}

/// A loaded configuration file.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// (variable, values, file key) for settings clap parses.
    defaults: Vec<(String, Vec<String>, String)>,
    /// `CARDLINK_TOPIC_PREFIX` and the like, as variables (the environment wins over them).
    pub passed_on: Vec<(String, String)>,
    /// `[kafka.librdkafka]`.
    pub librdkafka: BTreeMap<String, String>,
}

/// The file named by `--config FILE` / `--config=FILE` in `args`, else by `CARDLINK_CONFIG`.
pub fn config_path(args: &[OsString], env: Option<OsString>) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        if text == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    env.filter(|e| !e.is_empty()).map(PathBuf::from)
}

/// Every setting a file may hold: (file key, variable, help), from the command definition.
pub fn keys(cmd: &clap::Command) -> Vec<(String, String, String)> {
    let mut out = BTreeMap::new();
    collect(cmd, &mut |arg| {
        if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
            if env == CONFIG_ENV {
                return;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            out.entry(env.to_owned()).or_insert((file_key(env), help));
        }
    });
    let mut keys: Vec<_> = out.into_iter().map(|(env, (key, help))| (key, env, help)).collect();
    keys.push(("topic_prefix".into(), "CARDLINK_TOPIC_PREFIX".into(), "Prefix of every topic name".into()));
    keys.push(("log_format".into(), "CARDLINK_LOG_FORMAT".into(), "text or json".into()));
    keys.push((
        "kafka.librdkafka.<setting>".into(),
        "CARDLINK_KAFKA__<SETTING>".into(),
        "A librdkafka setting (security.protocol, sasl.*, ssl.*)".into(),
    ));
    keys.sort();
    keys
}

fn file_key(env: &str) -> String {
    env.strip_prefix(PREFIX).unwrap_or(env).to_ascii_lowercase()
}

fn collect(cmd: &clap::Command, f: &mut impl FnMut(&clap::Arg)) {
    for arg in cmd.get_arguments() {
        f(arg);
    }
    for sub in cmd.get_subcommands() {
        collect(sub, f);
    }
}

/// Reads and checks `path` against the settings `cmd` knows.
pub fn load(path: &Path, cmd: &clap::Command) -> Result<FileConfig, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { path: shown.clone(), message: format!("cannot read: {e}") })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| ConfigError::Read { path: shown.clone(), message: e.to_string() })?;
    let key_error = |key: &str, message: String| ConfigError::Key { path: shown.clone(), key: key.to_owned(), message };

    // Flatten one level of tables: [kafka] bootstrap = … is kafka_bootstrap.
    // (key as written, key as a variable name without the prefix, value)
    let mut flat: Vec<(String, String, toml::Value)> = Vec::new();
    let mut config = FileConfig::default();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                for (sub, value) in inner {
                    let dotted = format!("{key}.{sub}");
                    if key == "kafka" && sub == "librdkafka" {
                        let toml::Value::Table(settings) = value else {
                            return Err(key_error(&dotted, "expected a table of librdkafka settings".into()));
                        };
                        for (name, v) in settings {
                            let v = scalar(&v).ok_or_else(|| {
                                key_error(&format!("{dotted}.{name}"), "expected a string, number or boolean".into())
                            })?;
                            config.librdkafka.insert(name, v);
                        }
                    } else if matches!(value, toml::Value::Table(_)) {
                        return Err(key_error(&dotted, "tables nest one level only".into()));
                    } else {
                        flat.push((dotted, format!("{key}_{sub}"), value));
                    }
                }
            }
            other => flat.push((key.clone(), key, other)),
        }
    }

    let mut known: BTreeMap<String, Vec<clap::Arg>> = BTreeMap::new();
    collect(cmd, &mut |arg| {
        if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
            known.entry(env.to_owned()).or_default().push(arg.clone());
        }
    });
    for (key, name, value) in flat {
        let env = format!("{PREFIX}{}", name.to_ascii_uppercase());
        let values: Vec<String> = match &value {
            toml::Value::Array(items) => items
                .iter()
                .map(|v| scalar(v).ok_or_else(|| key_error(&key, "expected a list of strings or numbers".into())))
                .collect::<Result<_, _>>()?,
            v => vec![scalar(v).ok_or_else(|| key_error(&key, "expected a string, number, boolean or list".into()))?],
        };
        if PASSED_ON.contains(&env.as_str()) {
            config.passed_on.push((env, values.join(",")));
            continue;
        }
        let Some(args) = known.get(&env) else {
            return Err(key_error(&key, "not a cardlink setting (`cardlink config keys` lists them)".into()));
        };
        // Each value must be one the setting accepts, checked as the command line would.
        for arg in args {
            for v in &values {
                check_value(arg, v).map_err(|reason| key_error(&key, format!("invalid value {v:?}: {reason}")))?;
            }
        }
        config.defaults.push((env, values, key));
    }
    Ok(config)
}

/// Parses `value` with the setting's own parser, as if it came from the command line; the
/// reason when it does not parse.
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), String> {
    let probe = clap::Command::new("file").no_binary_name(true).arg(
        clap::Arg::new("value").long("value").value_parser(arg.get_value_parser().clone()).allow_hyphen_values(true),
    );
    match probe.try_get_matches_from(["--value", value]) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or_default();
            Err(line.rsplit_once(": ").map_or(line, |(_, reason)| reason).to_owned())
        }
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

impl FileConfig {
    /// `cmd` with the file's values as the defaults of the settings they name.
    pub fn apply(&self, cmd: clap::Command) -> clap::Command {
        apply_to(cmd, &self.defaults)
    }
}

fn apply_to(cmd: clap::Command, defaults: &[(String, Vec<String>, String)]) -> clap::Command {
    let cmd = cmd.mut_args(|arg| {
        let env = arg.get_env().and_then(|e| e.to_str()).map(str::to_owned);
        match env.and_then(|env| defaults.iter().find(|(e, _, _)| *e == env)) {
            Some((_, values, _)) => arg.default_values(values.clone()).required(false),
            None => arg,
        }
    });
    cmd.mut_subcommands(|sub| apply_to(sub, defaults))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::cli::Cli;

    fn load_text(text: &str) -> Result<FileConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cardlink.toml");
        std::fs::write(&path, text).unwrap();
        load(&path, &Cli::command())
    }

    #[test]
    fn the_file_is_named_by_flag_or_variable() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(config_path(&args(&["cardlink", "--config", "a.toml", "dev"]), None), Some("a.toml".into()));
        assert_eq!(config_path(&args(&["cardlink", "--config=b.toml"]), Some("c.toml".into())), Some("b.toml".into()));
        assert_eq!(config_path(&args(&["cardlink", "dev"]), Some("c.toml".into())), Some("c.toml".into()));
        assert_eq!(config_path(&args(&["cardlink", "dev"]), None), None);
    }

    #[test]
    fn file_values_become_defaults_that_flags_override() {
        let file = load_text(
            "trusted_keys = [\"k1:AAAA\"]\nconsent_secret = \"c2VjcmV0\"\n[subscription]\nlisten = \"127.0.0.1:6000\"\n[kafka]\nbootstrap = \"kafka:9092\"\n",
        )
        .unwrap();
        let cmd = file.apply(Cli::command());
        let m = cmd.clone().try_get_matches_from(["cardlink", "serve", "subscription"]).unwrap();
        let (_, serve) = m.subcommand().unwrap();
        let (_, sub) = serve.subcommand().unwrap();
        assert_eq!(sub.get_one::<std::net::SocketAddr>("subscription_listen").unwrap().to_string(), "127.0.0.1:6000");
        assert_eq!(sub.get_one::<String>("bootstrap").unwrap(), "kafka:9092");
        let m = cmd
            .try_get_matches_from(["cardlink", "serve", "subscription", "--subscription-listen", "127.0.0.1:7000"])
            .unwrap();
        let sub = m.subcommand().unwrap().1.subcommand().unwrap().1;
        assert_eq!(sub.get_one::<std::net::SocketAddr>("subscription_listen").unwrap().to_string(), "127.0.0.1:7000");
    }

    #[test]
    fn librdkafka_settings_and_passed_on_values_are_kept_apart() {
        let file = load_text(
            "topic_prefix = \"prod\"\nlog_format = \"json\"\n[kafka.librdkafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n",
        )
        .unwrap();
        assert_eq!(file.librdkafka.get("security.protocol").map(String::as_str), Some("SASL_SSL"));
        assert!(file.passed_on.contains(&("CARDLINK_TOPIC_PREFIX".into(), "prod".into())));
        assert!(file.passed_on.contains(&("CARDLINK_LOG_FORMAT".into(), "json".into())));
    }

    #[test]
    fn a_bad_file_names_the_key() {
        let err = load_text("[subscription]\nlisten = \"not an address\"\n").unwrap_err().to_string();
        assert!(err.contains("key `subscription.listen`") && err.contains("invalid"), "{err}");
        let err = load_text("[subscription]\nlisen = \"127.0.0.1:1\"\n").unwrap_err().to_string();
        assert!(err.contains("key `subscription.lisen`") && err.contains("not a cardlink setting"), "{err}");
        let err = load_text("listen = [").unwrap_err().to_string();
        assert!(err.contains("cardlink.toml"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/cardlink.example.toml");
        load(&example, &Cli::command()).unwrap();
    }

    #[test]
    fn every_key_is_listed() {
        let keys = keys(&Cli::command());
        for key in ["kafka_bootstrap", "subscription_listen", "trusted_keys", "topic_prefix"] {
            assert!(keys.iter().any(|(k, _, _)| k == key), "{key} missing");
        }
    }

    /// One composition root: every setting of a service that `serve` takes, `dev` takes too
    /// (with the same flag and variable), except the wiring dev makes itself (Kafka, the
    /// platform's keys and secrets). A flag added to `serve` only fails here.
    #[test]
    fn every_service_setting_reaches_dev() {
        const WIRING: [&str; 6] =
            ["bootstrap", "trusted_keys", "secret", "signing_key", "signing_key_id", "bootstrap_operator"];
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve");
        let dev = command.find_subcommand("dev").expect("dev");
        let mut missing = Vec::new();
        for service in serve.get_subcommands() {
            for arg in service.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version" | "config") || WIRING.contains(&id) {
                    continue;
                }
                let same = dev
                    .get_arguments()
                    .find(|d| d.get_id() == arg.get_id())
                    .is_some_and(|d| d.get_long() == arg.get_long() && d.get_env() == arg.get_env());
                if !same {
                    missing.push(format!("serve {} --{id}", service.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "settings serve takes and dev does not: {missing:?}");
    }

    /// A `serve` flag without an environment variable could be set neither from the file nor
    /// from the chart: every setting a deployment makes needs one.
    #[test]
    fn every_serve_setting_has_an_environment_variable() {
        // Said once, on the first start, by a person: not a setting.
        const ONE_OFF: [&str; 1] = ["bootstrap_operator"];
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("serve");
        let mut missing = Vec::new();
        for service in serve.get_subcommands() {
            for arg in service.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || matches!(id, "help" | "version" | "config") || ONE_OFF.contains(&id) {
                    continue;
                }
                if arg.get_env().is_none() {
                    missing.push(format!("serve {} --{id}", service.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "settings without an environment variable: {missing:?}");
    }
}
