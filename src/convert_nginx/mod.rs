//! `limpet convert-nginx FILE`: translate the `upstream`, `server`, `listen`, `server_name`,
//! `location` and `proxy_pass` parts of an nginx config into limpet TOML. Everything else is
//! listed in [`Conversion::unmapped`] with its line number.
//!
//! # Layout
//!
//! - `syntax`: nginx directives and blocks, with line numbers.
//! - `convert`: the conversion's state, the `http` level, inherited settings, notes.
//! - `server`, `upstream`: what `server` and `upstream` blocks become.
//! - `values`: nginx times, sizes and addresses in limpet's spelling.
//! - `emit`: the TOML document, written by `toml_edit`.

mod convert;
mod emit;
mod server;
mod syntax;
mod upstream;
mod values;

#[cfg(test)]
mod tests;

use convert::Converter;

/// The converted config and what could not be carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub toml: String,
    /// One entry per skipped directive, in file order: `line 12: proxy_buffering off (…)`.
    pub unmapped: Vec<String>,
}

/// Why an nginx config could not be converted at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("no upstream or server block found")]
    Empty,
}

/// Convert an nginx config (with or without the `http {}` wrapper) into limpet TOML.
pub fn convert(nginx_conf: &str) -> Result<Conversion, ConvertError> {
    let directives = syntax::parse(nginx_conf)?;
    let c = Converter::run(&directives);
    if c.servers.is_empty() && c.upstreams.is_empty() {
        return Err(ConvertError::Empty);
    }
    let toml = emit::document(&c.servers, &c.upstreams, &c.tls_upstreams).to_string();
    Ok(Conversion {
        toml,
        unmapped: c.into_notes(),
    })
}
