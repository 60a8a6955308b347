//! `tcpchat serve --config FILE`: the serve flags as a TOML file and as environment
//! variables.
//!
//! Every `serve` flag is a key, spelled as the flag without its dashes
//! (`max-message-bytes = 4096`), and an environment variable, `TCPCHAT_` and the key
//! upper-cased with `-` as `_` (`TCPCHAT_MAX_MESSAGE_BYTES`). A flag given on the
//! command line wins over the environment, which wins over the file, which wins over
//! the built-in default. The keys, their types and their checks are the flags' own
//! (clap's definitions are the one source): the file and the environment only change
//! the defaults the command line is parsed with, so precedence is clap's.
//!
//! Everything in the file and the environment is checked before the server starts,
//! even a value a flag overrides: a mistake is one line naming the key and where it
//! is, and exit code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command};

/// Flags that are not settings: they say where the settings are, or what to do with
/// them.
const NOT_SETTINGS: &[&str] = &[
    "config",
    "check-config",
    "example-config",
    "help",
    "version",
];

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The file, at this line.
    File(usize),
    /// This environment variable.
    Env(String),
    /// The command line.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => write!(f, "default"),
            Self::File(line) => write!(f, "file, line {line}"),
            Self::Env(var) => write!(f, "{var}"),
            Self::Flag => write!(f, "command line"),
        }
    }
}

/// A mistake in the file or the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The settings the file and the environment give, checked.
#[derive(Debug, Default)]
pub struct Overlay {
    /// By flag id: the value (as it would be typed on the command line) and where it
    /// came from. The environment's replace the file's.
    values: BTreeMap<String, (String, Source)>,
    file: Option<PathBuf>,
}

/// The environment variable of `key`.
pub fn env_var(key: &str) -> String {
    format!("TCPCHAT_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// The settings of `command` (`serve`): its flags that take a value or are on/off
/// switches, by key.
fn settings(command: &Command) -> BTreeMap<String, &Arg> {
    command
        .get_arguments()
        .filter_map(|arg| Some((arg.get_long()?.to_owned(), arg)))
        .filter(|(key, _)| !NOT_SETTINGS.contains(&key.as_str()))
        .collect()
}

/// Whether `arg` is an on/off switch (`--fsync`), not a flag with a value.
fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

/// Checks `value` as `command` would check it for `arg`; the reason if it is wrong.
fn check(command: &Command, arg: &Arg, value: &str) -> Result<(), String> {
    use clap::error::ErrorKind;
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let given = format!("--{long}={value}");
    match command
        .clone()
        .try_get_matches_from([command.get_name(), given.as_str()])
    {
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::ValueValidation | ErrorKind::InvalidValue | ErrorKind::InvalidUtf8
            ) =>
        {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid value");
            Err(first.trim_start_matches("error: ").to_owned())
        }
        // Other complaints (another flag it needs, say) are not about this value.
        _ => Ok(()),
    }
}

/// Reads and checks the settings in `file` (if any) and in `env` (the process's
/// environment, as pairs) for `command` (`serve`).
///
/// # Errors
/// A [`ConfigError`] naming the file and line, or the variable, and what is wrong:
/// a file that cannot be read or is not TOML, an unknown key, a value of the wrong
/// type, or one the flag would refuse.
pub fn gather(
    command: &Command,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Overlay, ConfigError> {
    let settings = settings(command);
    let mut overlay = Overlay {
        file: file.map(Path::to_path_buf),
        ..Overlay::default()
    };
    if let Some(path) = file {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError(format!("cannot read the config file {shown}: {error}"))
        })?;
        let table: BTreeMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(&text).map_err(|error| {
                let line = error.span().map_or(String::new(), |span| {
                    format!(":{}", line_of(&text, span.start))
                });
                ConfigError(format!(
                    "{shown}{line}: not a valid config file: {}",
                    error.message()
                ))
            })?;
        for (key, spanned) in table {
            let line = line_of(&text, spanned.span().start);
            let at = format!("{shown}:{line}: {key}");
            let Some(arg) = settings.get(&key) else {
                return Err(ConfigError(format!(
                    "{at}: no such setting (`tcpchat serve --help` lists them: each flag without its dashes)"
                )));
            };
            let value = file_value(arg, spanned.get_ref())
                .map_err(|why| ConfigError(format!("{at}: {why}")))?;
            check(command, arg, &value).map_err(|why| ConfigError(format!("{at}: {why}")))?;
            overlay
                .values
                .insert(arg.get_id().to_string(), (value, Source::File(line)));
        }
    }
    let env: BTreeMap<String, String> = env.into_iter().collect();
    for (key, arg) in &settings {
        let var = env_var(key);
        let Some(value) = env.get(&var) else {
            continue;
        };
        let value = if is_switch(arg) {
            match value.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => "true".to_owned(),
                "false" | "0" | "no" | "off" | "" => "false".to_owned(),
                _ => {
                    return Err(ConfigError(format!(
                        "{var}={value}: {key} is on or off: true or false"
                    )));
                }
            }
        } else {
            check(command, arg, value).map_err(|why| ConfigError(format!("{var}: {why}")))?;
            value.clone()
        };
        overlay
            .values
            .insert(arg.get_id().to_string(), (value, Source::Env(var)));
    }
    Ok(overlay)
}

/// A value from the file, as it would be typed on the command line.
fn file_value(arg: &Arg, value: &toml::Value) -> Result<String, String> {
    use toml::Value;
    if is_switch(arg) {
        return match value {
            Value::Boolean(on) => Ok(on.to_string()),
            other => Err(format!(
                "must be true or false, not {} {other}",
                other.type_str()
            )),
        };
    }
    let scalar = |value: &Value| match value {
        Value::String(text) => Ok(text.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Float(x) => Ok(x.to_string()),
        other => Err(format!(
            "must be a string or a number, not {} {other}",
            other.type_str()
        )),
    };
    match (value, arg.get_value_delimiter()) {
        (Value::Array(items), Some(delimiter)) => Ok(items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(&delimiter.to_string())),
        (value, _) => scalar(value),
    }
}

/// The line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes().get(..offset).map_or(1, |before| {
        before.iter().filter(|&&b| b == b'\n').count() + 1
    })
}

impl Overlay {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `command` (`serve`) with the file's and the environment's values as its
    /// defaults, so that flags still win.
    pub fn apply(&self, command: Command) -> Command {
        self.values
            .iter()
            .fold(command, |command, (id, (value, _))| {
                let value = value.clone();
                command.mut_arg(id, move |arg| arg.default_value(value))
            })
    }

    /// The effective settings, as a config file that gives them (every key, with
    /// where its value came from): what `--check-config` prints.
    pub fn effective(&self, command: &Command, matches: &clap::ArgMatches) -> String {
        let mut out = String::new();
        if let Some(file) = &self.file {
            out.push_str(&format!(
                "# tcpchat serve: the settings in effect, with {}\n",
                file.display()
            ));
        } else {
            out.push_str("# tcpchat serve: the settings in effect\n");
        }
        for (key, arg) in settings(command) {
            let id = arg.get_id().as_str();
            let raw: Option<Vec<String>> = matches.get_raw(id).map(|values| {
                values
                    .map(|value| value.to_string_lossy().into_owned())
                    .collect()
            });
            let source = match matches.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => Source::Flag,
                _ => self
                    .values
                    .get(id)
                    .map_or(Source::Default, |(_, source)| source.clone()),
            };
            match raw {
                Some(values) if !values.is_empty() => {
                    out.push_str(&format!(
                        "{key} = {}  # {source}\n",
                        toml_value(arg, &values)
                    ));
                }
                _ => out.push_str(&format!("# {key} is not set  # {source}\n")),
            }
        }
        out
    }
}

/// Every setting of `command` (`serve`) in `matches`, as typed (a list joined with
/// `,`; empty when not set): what a reload compares to tell what changed.
pub fn values(command: &Command, matches: &clap::ArgMatches) -> BTreeMap<String, String> {
    settings(command)
        .into_iter()
        .map(|(key, arg)| {
            let value = matches
                .get_raw(arg.get_id().as_str())
                .map(|values| {
                    values
                        .map(|value| value.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            (key, value)
        })
        .collect()
}

/// `values` of `arg` written as TOML.
fn toml_value(arg: &Arg, values: &[String]) -> String {
    let one = |value: &str| {
        if is_switch(arg)
            || value.parse::<i64>().is_ok()
            || value.parse::<f64>().is_ok_and(f64::is_finite)
        {
            value.to_owned()
        } else {
            toml::Value::String(value.to_owned()).to_string()
        }
    };
    if arg.get_value_delimiter().is_some() {
        format!(
            "[{}]",
            values.iter().map(|v| one(v)).collect::<Vec<_>>().join(", ")
        )
    } else {
        values.first().map_or_else(String::new, |v| one(v))
    }
}

/// An example config file for `command` (`serve`): every key, commented out, with
/// its help and its default. `contrib/tcpchat.toml` is this (a test keeps it so).
pub fn example(command: &Command) -> String {
    let mut out = String::from(
        "# tcpchat serve --config FILE\n\
         #\n\
         # Every `tcpchat serve` flag is a key here, spelled as the flag without its\n\
         # dashes, and an environment variable: TCPCHAT_ and the key in capitals, `-` as\n\
         # `_` (TCPCHAT_MAX_MESSAGE_BYTES). A flag wins over the environment, which wins\n\
         # over this file, which wins over the defaults shown. `tcpchat serve\n\
         # --check-config --config FILE` checks a file and prints what is in effect.\n\
         # Every key below is commented out, with its default: uncomment to change it.\n",
    );
    for (key, arg) in settings(command) {
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        for line in wrap(&help, 84) {
            out.push_str(&format!("# {line}\n"));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        if is_switch(arg) {
            out.push_str(&format!("#{key} = false\n"));
        } else if defaults.is_empty() {
            out.push_str(&format!("#{key} =   # not set by default\n"));
        } else {
            out.push_str(&format!("#{key} = {}\n", toml_value(arg, &defaults)));
        }
    }
    out
}

/// `text` in lines of at most `width` characters (words kept whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `serve` with a few flags of each kind.
    fn serve() -> Command {
        Command::new("serve")
            .arg(
                Arg::new("max_message_bytes")
                    .long("max-message-bytes")
                    .value_parser(clap::value_parser!(usize))
                    .default_value("4096"),
            )
            .arg(Arg::new("chat_name").long("name").default_value("Bad IRC"))
            .arg(Arg::new("fsync").long("fsync").action(ArgAction::SetTrue))
            .arg(
                Arg::new("origins")
                    .long("http-allowed-origins")
                    .value_delimiter(','),
            )
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_parser(clap::value_parser!(PathBuf)),
            )
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write it");
        file
    }

    fn parsed(overlay: &Overlay, args: &[&str]) -> clap::ArgMatches {
        overlay
            .apply(serve())
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .expect("parses")
    }

    fn none() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let config = file("max-message-bytes = 1000\nname = \"From the file\"\nfsync = true\n");
        let env = vec![("TCPCHAT_MAX_MESSAGE_BYTES".to_owned(), "2000".to_owned())];
        let overlay = gather(&serve(), Some(config.path()), env).expect("valid");
        let matches = parsed(&overlay, &[]);
        assert_eq!(matches.get_one::<usize>("max_message_bytes"), Some(&2000));
        assert_eq!(
            matches.get_one::<String>("chat_name").map(String::as_str),
            Some("From the file")
        );
        assert_eq!(matches.get_one::<bool>("fsync"), Some(&true));
        let matches = parsed(&overlay, &["--max-message-bytes", "3000", "--name", "Flag"]);
        assert_eq!(matches.get_one::<usize>("max_message_bytes"), Some(&3000));
        assert_eq!(
            matches.get_one::<String>("chat_name").map(String::as_str),
            Some("Flag")
        );
        let overlay = gather(&serve(), None, none()).expect("nothing to check");
        assert_eq!(
            parsed(&overlay, &[]).get_one::<usize>("max_message_bytes"),
            Some(&4096)
        );
    }

    #[test]
    fn mistakes_name_the_key_and_the_line() {
        let cases = [
            (
                "name = \"x\"\nmax-mesage-bytes = 10\n",
                ":2: max-mesage-bytes: no such setting",
            ),
            (
                "\n\nmax-message-bytes = \"lots\"\n",
                ":3: max-message-bytes: invalid value 'lots'",
            ),
            ("fsync = \"yes\"\n", ":1: fsync: must be true or false"),
            ("name = [1, 2]\n", ":1: name: must be a string or a number"),
            (
                "name = \"x\"\nname = \"y\"\n",
                ":2: not a valid config file",
            ),
            ("max-message-bytes = \n", ":1: not a valid config file"),
        ];
        for (text, says) in cases {
            let config = file(text);
            let error = gather(&serve(), Some(config.path()), none())
                .expect_err(text)
                .to_string();
            assert!(error.contains(says), "{text:?}: {error}");
            assert!(
                error.starts_with(&config.path().display().to_string()),
                "{error}"
            );
        }
        let error = gather(
            &serve(),
            None,
            vec![("TCPCHAT_MAX_MESSAGE_BYTES".to_owned(), "-1".to_owned())],
        )
        .expect_err("a bad value in the environment")
        .to_string();
        assert!(
            error.starts_with("TCPCHAT_MAX_MESSAGE_BYTES: invalid value '-1'"),
            "{error}"
        );
        let missing = gather(
            &serve(),
            Some(Path::new("/nonexistent/tcpchat.toml")),
            none(),
        )
        .expect_err("no such file")
        .to_string();
        assert!(missing.contains("cannot read the config file /nonexistent/tcpchat.toml"));
    }

    #[test]
    fn lists_are_arrays_or_comma_separated() {
        let config =
            file("http-allowed-origins = [\"https://a.example\", \"https://b.example\"]\n");
        let overlay = gather(&serve(), Some(config.path()), none()).expect("valid");
        let matches = parsed(&overlay, &[]);
        let origins: Vec<&String> = matches
            .get_many::<String>("origins")
            .expect("origins")
            .collect();
        assert_eq!(origins, ["https://a.example", "https://b.example"]);
    }

    #[test]
    fn the_effective_settings_say_where_each_came_from_and_parse_back() {
        let config = file("name = \"From the file\"\n");
        let overlay = gather(
            &serve(),
            Some(config.path()),
            vec![("TCPCHAT_FSYNC".to_owned(), "1".to_owned())],
        )
        .expect("valid");
        let matches = parsed(&overlay, &["--max-message-bytes", "77"]);
        let effective = overlay.effective(&serve(), &matches);
        assert!(
            effective.contains("name = \"From the file\"  # file, line 1"),
            "{effective}"
        );
        assert!(
            effective.contains("fsync = true  # TCPCHAT_FSYNC"),
            "{effective}"
        );
        assert!(
            effective.contains("max-message-bytes = 77  # command line"),
            "{effective}"
        );
        let again = file(&effective);
        let overlay = gather(&serve(), Some(again.path()), none()).expect("it is a config file");
        assert_eq!(
            parsed(&overlay, &[]).get_one::<usize>("max_message_bytes"),
            Some(&77)
        );
    }

    #[test]
    fn the_example_has_every_key_commented_out_with_its_default() {
        let example = example(&serve());
        let table: toml::Table = toml::from_str(&example).expect("TOML");
        assert!(table.is_empty(), "everything is commented out");
        for line in [
            "#max-message-bytes = 4096",
            "#name = \"Bad IRC\"",
            "#fsync = false",
        ] {
            assert!(example.lines().any(|l| l == line), "{line} in:\n{example}");
        }
        assert!(!example.contains("#config"), "not a setting");
    }
}
