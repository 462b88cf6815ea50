//! A secret named by configuration rather than written in it: a file (`…_file`, its trailing
//! newline dropped) or an environment variable (`…_env`), at most one of them.

use std::path::PathBuf;

use crate::config::ConfigError;

/// The secret `file` or `var` holds, if either is given. `err` makes an error for a key (the
/// caller's section prefix), so messages name the key as the file spells it.
///
/// # Errors
/// Both given, an unreadable file, or an unset variable.
pub fn read_secret(
    file: Option<PathBuf>,
    var: Option<String>,
    (file_key, env_key): (&str, &str),
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Option<String>, ConfigError> {
    match (file, var) {
        (Some(_), Some(_)) => Err(err(file_key, format!("expected one of {file_key}, {env_key}"))),
        (Some(file), None) => std::fs::read_to_string(&file)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| err(file_key, format!("{}: {e}", file.display()))),
        (None, Some(var)) => std::env::var(&var)
            .map(Some)
            .map_err(|_| err(env_key, format!("environment variable {var} is not set"))),
        (None, None) => Ok(None),
    }
}
