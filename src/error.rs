//! The two ways an applet fails, and their shell exit statuses.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Bad usage or configuration: exit 2, and nothing was started or changed.
    Usage(String),
    /// Something failed at run time: exit 1.
    Fail(String),
}

impl Error {
    pub fn status(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Fail(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Fail(m) => f.write_str(m),
        }
    }
}

/// Shorthand for a run-time failure with context: `fail(format!(...))`.
pub fn fail<T>(msg: impl Into<String>) -> Result<T, Error> {
    Err(Error::Fail(msg.into()))
}

/// Attaches context to an I/O error: `file.read(..).ctx(|| format!("reading {p}"))`.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::Fail(format!("{}: {e}", what())))
    }
}

/// Parses an applet's arguments with argh; `--help` prints and exits 0, bad flags exit 2.
pub fn parse_args<T: argh::FromArgs>(name: &str, args: &[String]) -> Result<T, Error> {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    match T::from_args(&[name], &strs) {
        Ok(t) => Ok(t),
        Err(early) if early.status.is_ok() => {
            print!("{}", early.output);
            std::process::exit(0);
        }
        Err(early) => Err(Error::Usage(early.output.trim_end().to_string())),
    }
}
