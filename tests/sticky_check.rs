//! `limpet --check` warns, without failing, when a location's `read_timeout` would cut Socket.IO's long-polls
//! and idle WebSockets (pingInterval + pingTimeout = 45 s).

mod support;

use std::net::SocketAddr;

use support::*;

/// A sid upstream behind location "/" with `location_keys` added to the location.
fn config(location_keys: &str) -> String {
    let servers: [SocketAddr; 1] = ["127.0.0.1:3000".parse().unwrap()];
    simple_config("sid", &servers, "", "").replacen(
        "connect_timeout = \"1s\"\n",
        &format!("connect_timeout = \"1s\"\n{location_keys}\n"),
        1,
    )
}

#[test]
fn a_read_timeout_under_45s_is_a_warning_not_an_error() {
    let (code, output) = check_config(&config("read_timeout = \"30s\""));
    assert_eq!(code, 0, "{output}");
    let warning = output
        .lines()
        .find(|l| l.contains("warning"))
        .unwrap_or_else(|| panic!("no warning: {output}"));
    assert!(
        warning.contains("server[0].location[0].read_timeout"),
        "{warning}"
    );
    assert!(
        warning.contains("30s") && warning.contains("45s"),
        "{warning}"
    );
}

#[test]
fn a_read_timeout_of_45s_or_more_draws_no_warning() {
    for keys in ["", "read_timeout = \"45s\"", "read_timeout = \"2m\""] {
        let (code, output) = check_config(&config(keys));
        assert_eq!(code, 0, "{keys}: {output}");
        assert!(!output.contains("read_timeout"), "{keys}: {output}");
    }
}

#[test]
fn the_warning_does_not_hide_errors() {
    let bad = config("read_timeout = \"10s\"").replace("balance = \"sid\"", "balance = \"sticky\"");
    let (code, output) = check_config(&bad);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("upstream.app.balance"), "{output}");
}
