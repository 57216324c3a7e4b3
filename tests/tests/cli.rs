//! The shell completions and man pages both binaries generate from their clap definitions
//! (issue 10, item 9): every subcommand is in them, the bash script parses, and each
//! subcommand has a page of its own. No servers needed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

use cim_tests::cim_bin;

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(cim_bin(bin)).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The subcommands `--help` lists (the first word of each line under "Commands:").
fn subcommands(bin: &str) -> Vec<String> {
    let help = stdout(&run(bin, &["--help"]));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_and_man_pages_cover_every_subcommand() {
    for bin in ["cim-storage", "cim-gateway"] {
        let commands = subcommands(bin);
        assert!(commands.len() >= 3, "{bin}: {commands:?}");
        assert!(commands.iter().any(|c| c == "completions"), "{commands:?}");

        for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
            let script = stdout(&run(bin, &["completions", shell]));
            for command in &commands {
                assert!(
                    script.contains(command.as_str()),
                    "{bin} {shell}: no {command}"
                );
            }
        }
        // The bash script is valid bash.
        let script = stdout(&run(bin, &["completions", "bash"]));
        let path = std::env::temp_dir().join(format!("{bin}-{}.bash", std::process::id()));
        std::fs::write(&path, script).unwrap();
        let parsed = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            parsed.status.success(),
            "{}",
            String::from_utf8_lossy(&parsed.stderr)
        );

        let page = stdout(&run(bin, &["manpage"]));
        assert!(
            page.starts_with(".ie") || page.contains(".TH"),
            "{bin}: {page}"
        );
        assert!(page.contains(&format!(".TH {bin}")), "{bin}: {page}");
        for command in &commands {
            // roff escapes hyphens.
            let roff = command.replace('-', "\\-");
            assert!(page.contains(&roff), "{bin} man page: no {command}");
            let own = stdout(&run(bin, &["manpage", command]));
            assert!(own.contains(&format!(".TH {bin}-{command} 1")), "{own}");
        }
        let unknown = run(bin, &["manpage", "no-such-command"]);
        assert_eq!(unknown.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-command"));
    }
}
