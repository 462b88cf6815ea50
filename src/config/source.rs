//! The sources of a configuration, read again on every reload: the file (or none), the
//! rpardini/docker-registry-proxy variables and the flags, stacked into one [`Config`].

use std::path::PathBuf;

use crate::config::{Config, ConfigError, Layer};

/// The sources of the configuration, kept so that a reload reads them again.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Flags and `REGCACHE_*` variables (fixed for the life of the process).
    pub flags: Layer,
    /// `--config FILE`, or the default file.
    pub file: PathBuf,
    /// Whether `file` was named explicitly (then it must exist).
    pub explicit: bool,
}

/// A configuration and what it was made of.
#[derive(Debug)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// What rpardini/docker-registry-proxy variables were mapped to, one line each.
    pub env_mappings: Vec<String>,
}

impl ConfigSource {
    /// Reads the file and the environment again and stacks them under the flags.
    ///
    /// # Errors
    /// The first problem found, naming its file and line or its variable.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let (file_layer, file) = if self.explicit || self.file.exists() {
            (Layer::from_file(&self.file)?, Some(self.file.clone()))
        } else {
            (Layer::default(), None)
        };
        let (env_layer, env_mappings) = crate::config::rpardini::layer(|k| std::env::var(k).ok())?;
        let origin = file
            .as_ref()
            .map_or_else(|| "configuration".to_string(), |f| f.display().to_string());
        let config = self.flags.clone().over(env_layer).over(file_layer).resolve(&origin)?;
        Ok(Loaded {
            config,
            file,
            env_mappings,
        })
    }
}
