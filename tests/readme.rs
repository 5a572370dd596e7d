//! The README's examples, run as written: every ```console block that shows commands (`$ ...`) and their output
//! is run by bash against the real binary and its output compared with the README's, so that the README cannot
//! drift from what the program prints.
//!
//! - The commands run in a scratch directory that holds `examples/` and `tests/` of this repository (links) and
//!   where one `serve` of the test runs with its development certificate under `certs/`, as after the README's
//!   "Build it and start it"; `default-deny-guard` on `PATH` is the binary under test.
//! - A block that talks to `https://localhost:8443` gets that `serve`'s ephemeral port instead of 8443.
//! - Times (`2027-12-01T22:33:37Z`, as `certs` prints its certificate's end) are masked on both sides.
//! - A block whose commands include `kubectl` needs a Kubernetes control plane: it is not run here. The
//!   end-to-end suite (`tests/e2e.rs`, `hack/e2e.sh`) drives the same requests through a real kube-apiserver.
//!
//! The blocks of one README share the scratch directory and run in order, as a reader would run them.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use snapbox::IntoData as _;

/// One ```console block: its first line in the README, the commands and the output they must print.
struct Block {
    line: usize,
    commands: Vec<String>,
    output: String,
}

impl Block {
    fn needs_a_cluster(&self) -> bool {
        self.commands.iter().any(|c| c.split(|ch: char| ch.is_whitespace() || ch == '|').any(|w| w == "kubectl"))
    }

    fn needs_serve(&self) -> bool {
        self.commands.iter().any(|c| c.contains("localhost:8443"))
    }
}

/// The console blocks: `$ ` starts a command (continued by a trailing `\`), every other line is output.
fn console_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        if line.trim_end() != "```console" {
            continue;
        }
        let mut block = Block { line: n + 1, commands: Vec::new(), output: String::new() };
        let mut continued = false;
        for (_, line) in lines.by_ref() {
            if line.trim_end() == "```" {
                break;
            }
            if continued {
                let command = block.commands.last_mut().unwrap();
                command.push('\n');
                command.push_str(line);
                continued = line.ends_with('\\');
            } else if let Some(command) = line.strip_prefix("$ ") {
                block.commands.push(command.to_owned());
                continued = command.ends_with('\\');
            } else {
                block.output.push_str(line);
                block.output.push('\n');
            }
        }
        blocks.push(block);
    }
    blocks
}

/// Replaces every RFC 3339 UTC time (`2027-12-01T22:33:37Z`, fractions allowed) with `[TIME]`.
fn mask_times(text: &str) -> String {
    let shape = |b: &[u8]| {
        b.len() >= 20
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && [5, 6, 8, 9, 11, 12, 14, 15, 17, 18].iter().all(|&i| b[i].is_ascii_digit())
    };
    let bytes = text.as_bytes();
    let (mut out, mut i) = (String::with_capacity(text.len()), 0);
    while i < bytes.len() {
        if shape(&bytes[i..]) {
            let mut end = i + 19;
            if bytes.get(end) == Some(&b'.') {
                end += 1;
                while bytes.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
            }
            if bytes.get(end) == Some(&b'Z') {
                out.push_str("[TIME]");
                i = end + 1;
                continue;
            }
        }
        let ch = text[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[test]
fn masking_covers_times_and_nothing_else() {
    assert_eq!(mask_times("until 2027-12-01T22:33:37Z."), "until [TIME].");
    assert_eq!(mask_times("at 2026-12-01T22:33:32.391402Z  INFO"), "at [TIME]  INFO");
    assert_eq!(mask_times("2026-12-31 and 2026-12-01T22:33"), "2026-12-31 and 2026-12-01T22:33");
}

#[test]
fn console_blocks_are_read_as_commands_and_output() {
    let blocks = console_blocks("text\n```console\n$ a \\\n    --b\nout 1\n$ c\n```\n```sh\n$ not this\n```\n");
    assert_eq!(blocks.len(), 1);
    assert_eq!(
        (blocks[0].line, blocks[0].commands.as_slice()),
        (2, ["a \\\n    --b".to_owned(), "c".to_owned()].as_slice())
    );
    assert_eq!(blocks[0].output, "out 1\n");
}

#[test]
fn every_readme_console_example_prints_what_the_readme_shows() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let blocks = console_blocks(&readme);

    let guard = Guard::start(&[]);
    let scratch = guard.dir.path();
    for linked in ["examples", "tests"] {
        std::os::unix::fs::symlink(repo.join(linked), scratch.join(linked)).unwrap();
    }
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let port = guard.webhook.port().to_string();

    let (mut ran, mut with_serve, mut skipped) = (0, 0, Vec::new());
    for block in &blocks {
        if block.needs_a_cluster() {
            skipped.push(block.line);
            continue;
        }
        with_serve += usize::from(block.needs_serve());
        let script = block.commands.iter().map(|c| c.replace("8443", &port)).collect::<Vec<_>>().join("\n");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("exec 2>&1\n{script}"))
            .current_dir(scratch)
            .env("PATH", &path)
            .env_remove("KUBECONFIG")
            .output()
            .expect("run bash");
        // A last line without a newline (`base64 -d`) is shown in the README as a line like any other.
        let actual = mask_times(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'));
        let expected = mask_times(block.output.trim_end_matches('\n'));
        let name = format!("the output of the commands at README.md line {}", block.line);
        if let Err(e) = snapbox::Assert::new().try_eq(Some(&name), actual.into_data(), expected.into_data()) {
            panic!("README.md line {}: the output of\n{script}\nis not what the README shows:\n{e}", block.line);
        }
        ran += 1;
    }
    // The test cannot pass by finding nothing to run: the offline examples and the ones against serve are there.
    assert!(ran >= 4 && with_serve >= 2, "ran {ran} blocks ({with_serve} against serve); skipped {skipped:?}");
    eprintln!("README console blocks: {ran} run ({with_serve} against serve), not run (kubectl) at lines {skipped:?}");
}
