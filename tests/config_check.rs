//! The CLI and the config checker: `limpet --check` on every fixture under tests/config/, the shipped example,
//! `--version` and `--help`.
//!
//! Each file in tests/config/invalid/ states what `--check` must say about it in `# expect: ` lines; the test
//! asserts exit 1, each of those lines verbatim, and no other error.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

/// The `# expect: ` lines of a fixture.
fn expected_errors(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(str::to_string)
        .collect()
}

/// The error lines of `--check` output: the indented lines after the "N error(s)" header.
fn reported_errors(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .map(str::to_string)
        .collect()
}

fn limpet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_limpet"))
}

#[test]
fn every_invalid_fixture_fails_with_its_key_path_and_reason() {
    for file in fixtures("invalid") {
        let expected = expected_errors(&file);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect: ` line",
            file.display()
        );
        let (code, output) = check_file(&file);
        assert_eq!(code, 1, "{}: exit code\n{output}", file.display());
        let header = format!("{}: {} error(s)", file.display(), expected.len());
        assert!(
            output.lines().any(|l| l == header),
            "{}: no header {header:?} in\n{output}",
            file.display()
        );
        let mut reported = reported_errors(&output);
        let mut expected = expected;
        reported.sort();
        expected.sort();
        assert_eq!(reported, expected, "{}:\n{output}", file.display());
    }
}

#[test]
fn every_valid_fixture_passes() {
    for file in fixtures("valid") {
        let (code, output) = check_file(&file);
        assert_eq!(code, 0, "{}:\n{output}", file.display());
        assert!(
            output.contains(&format!("{}: ok", file.display())),
            "{}:\n{output}",
            file.display()
        );
        assert!(!output.contains("error"), "{}:\n{output}", file.display());
    }
}

#[test]
fn the_shipped_example_passes_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/limpet.toml");
    let (code, output) = check_file(&path);
    assert_eq!(code, 0, "{output}");
    assert!(!output.contains("warning"), "{output}");
    let text = std::fs::read_to_string(&path).unwrap();
    for port in 3001..=3003 {
        assert!(
            text.contains(&format!("addr = \"127.0.0.1:{port}\"")),
            "config/limpet.toml should front 127.0.0.1:{port}"
        );
    }
}

#[test]
fn check_without_c_reads_config_limpet_toml() {
    let out = limpet()
        .arg("--check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config/limpet.toml: ok"), "{stdout}");
}

#[test]
fn a_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, output) = check_file(&dir.path().join("nope.toml"));
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("nope.toml: 1 error(s)"), "{output}");
    assert!(output.contains("cannot read file"), "{output}");
}

#[test]
fn running_with_a_bad_config_exits_1_listing_the_errors() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/invalid/every_error_listed.toml");
    let out = limpet().arg("-c").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let mut reported = reported_errors(&stderr);
    let mut expected = expected_errors(&file);
    reported.sort();
    expected.sort();
    assert_eq!(reported, expected, "{stderr}");
}

#[test]
fn version_prints_the_crate_version() {
    let out = limpet().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("limpet {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_the_options() {
    let out = limpet().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in ["--config", "-c", "--check", "--version", "--help"] {
        assert!(stdout.contains(needle), "--help lacks {needle}:\n{stdout}");
    }
    assert!(stdout.contains("config/limpet.toml"), "{stdout}");
}

#[test]
fn an_unknown_option_is_refused() {
    let out = limpet().arg("--chekc").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--chekc"));
}
