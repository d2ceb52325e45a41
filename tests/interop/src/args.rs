//! A tiny argument parser: `--flag VALUE` options and positionals (no clap, to keep the
//! dependency closure and the cold build small).

use anyhow::{bail, Result};

pub struct Args {
    usage: &'static str,
    rest: Vec<String>,
}

impl Args {
    pub fn from_env(usage: &'static str) -> Result<Self> {
        let rest: Vec<String> = std::env::args().skip(1).collect();
        if rest.iter().any(|a| a == "-h" || a == "--help") {
            println!("usage: {usage}");
            std::process::exit(0);
        }
        Ok(Args { usage, rest })
    }

    /// The value of `--name VALUE`, if given (removed from the remaining arguments).
    pub fn optional(&mut self, name: &str) -> Result<Option<String>> {
        match self.rest.iter().position(|a| a == name) {
            None => Ok(None),
            Some(i) if i + 1 < self.rest.len() => {
                let value = self.rest.remove(i + 1);
                self.rest.remove(i);
                Ok(Some(value))
            }
            Some(_) => bail!("{name} needs a value; usage: {}", self.usage),
        }
    }

    pub fn required(&mut self, name: &str) -> Result<String> {
        match self.optional(name)? {
            Some(v) => Ok(v),
            None => bail!("missing {name}; usage: {}", self.usage),
        }
    }

    /// `--name` without a value.
    pub fn switch(&mut self, name: &str) -> bool {
        match self.rest.iter().position(|a| a == name) {
            Some(i) => {
                self.rest.remove(i);
                true
            }
            None => false,
        }
    }

    /// The next positional argument.
    pub fn positional(&mut self) -> Result<String> {
        match self.rest.iter().position(|a| !a.starts_with("--")) {
            Some(i) => Ok(self.rest.remove(i)),
            None => bail!("missing argument; usage: {}", self.usage),
        }
    }

    /// All remaining positionals.
    pub fn positionals(&mut self) -> Vec<String> {
        std::mem::take(&mut self.rest)
    }

    pub fn finish(self) -> Result<()> {
        if !self.rest.is_empty() {
            bail!("unexpected arguments {:?}; usage: {}", self.rest, self.usage);
        }
        Ok(())
    }
}
