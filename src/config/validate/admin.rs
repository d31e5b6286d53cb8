//! `[admin]`: the admin listen address and its bearer token.

use super::Checker;
use crate::config::raw::RawAdmin;
use crate::config::{Admin, AdminToken};

/// A token shorter than this is accepted with a warning.
const MIN_TOKEN_LEN: usize = 16;

pub(super) fn admin(c: &mut Checker, a: &RawAdmin) -> Option<Admin> {
    let text = a.listen.as_deref().unwrap_or("127.0.0.1:9100");
    let listen = c.listen_addr("admin.listen", text)?;
    let token = match a.token_file.as_deref() {
        Some(file) if !file.is_empty() => admin_token(c, file),
        _ => {
            if !listen.ip().is_loopback() {
                c.error(
                    "admin.listen",
                    format!("{listen} is not a loopback address: set admin.token_file (a bearer token for reload, drain and the server API)"),
                );
            }
            None
        }
    };
    Some(Admin { listen, token })
}

/// Reads the admin token: the file's text without surrounding whitespace, one line of visible ASCII.
fn admin_token(c: &mut Checker, file: &str) -> Option<AdminToken> {
    let path = "admin.token_file";
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            c.error(path, format!("cannot read {file}: {e}"));
            return None;
        }
    };
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        c.error(
            path,
            format!("{file} must hold one token of visible ASCII characters"),
        );
        return None;
    }
    if token.len() < MIN_TOKEN_LEN {
        c.warn(
            path,
            format!("the token in {file} is shorter than {MIN_TOKEN_LEN} characters"),
        );
    }
    Some(AdminToken(token.to_string()))
}
