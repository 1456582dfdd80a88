//! `netvmm run ... -- CMD [ARGS...]`: the guest command, carried to netvmm's guest init on
//! the kernel command line.
//!
//! Each argument is single-quoted for the guest's `sh -c`, then the whole command is
//! base64-encoded into `netvmm.run64=`: the kernel splits its command line at spaces and
//! toggles on every double quote, and the guest init evaluates it as shell words, so any
//! other encoding would have to survive both. The kernel's length limit is checked when
//! the command line is written (a long command is refused, never cut short).

use base64::Engine;

/// The guest init's key for a base64-encoded command (resources/guest-init.sh).
pub const RUN64_KEY: &str = "netvmm.run64=";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestCommandError {
    #[error(
        "--cmdline already has {key}... and a command follows --: give the guest command one way"
    )]
    TwoCommands { key: &'static str },
    #[error("the guest command after -- has an argument with a NUL byte: a command line cannot carry it")]
    Nul,
}

/// The guest shell's spelling of `argv`: every argument intact, quotes, spaces and `$`
/// included.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| lab::runner::shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cmdline` with the guest command `argv` added (unchanged when `argv` is empty).
pub fn with_command(cmdline: &str, argv: &[String]) -> Result<String, GuestCommandError> {
    if argv.is_empty() {
        return Ok(cmdline.to_string());
    }
    for key in ["netvmm.run=", RUN64_KEY] {
        if cmdline.split_whitespace().any(|w| w.starts_with(key)) {
            return Err(GuestCommandError::TwoCommands { key });
        }
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(GuestCommandError::Nul);
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(shell_words(argv));
    Ok(format!("{} {RUN64_KEY}{encoded}", cmdline.trim_end())
        .trim_start()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn decoded(cmdline: &str) -> String {
        let b64 = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(RUN64_KEY))
            .expect("a run64 key");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn no_command_leaves_the_command_line_alone() {
        assert_eq!(with_command("quiet", &[]).unwrap(), "quiet");
    }

    #[test]
    fn awkward_arguments_arrive_as_the_same_words() {
        let a = argv(&["sh", "-c", r#"echo "two words"; exit 5"#]);
        let c = with_command("quiet netvmm.ip=192.0.2.2/24", &a).unwrap();
        assert!(
            c.starts_with("quiet netvmm.ip=192.0.2.2/24 netvmm.run64="),
            "{c}"
        );
        // Nothing the kernel or the guest's shell would split or expand.
        let value = c.rsplit(' ').next().unwrap();
        assert!(!value.contains(['"', '\'', '$', ' ', '\\']), "{value}");
        assert_eq!(decoded(&c), r#"'sh' '-c' 'echo "two words"; exit 5'"#);
        let c = with_command("", &argv(&["printf", "%s\n", "it's $HOME", "a\tb"])).unwrap();
        assert_eq!(decoded(&c), "'printf' '%s\n' 'it'\\''s $HOME' 'a\tb'");
    }

    #[test]
    fn the_words_run_as_given_in_a_real_shell() {
        // The guest runs `sh -c WORDS`; a POSIX shell here must see the same argv.
        let a = argv(&["printf", "<%s>", "two words", "$HOME", "it's", "", "*"]);
        let out = std::process::Command::new("sh")
            .args(["-c", &shell_words(&a)])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "<two words><$HOME><it's><><*>"
        );
    }

    #[test]
    fn a_second_way_to_give_the_command_is_refused() {
        let e = with_command(r#"netvmm.run="true""#, &argv(&["false"])).unwrap_err();
        assert_eq!(e, GuestCommandError::TwoCommands { key: "netvmm.run=" });
        assert!(e.to_string().contains("--cmdline"));
        let e = with_command("netvmm.run64=dHJ1ZQ==", &argv(&["false"])).unwrap_err();
        assert!(matches!(e, GuestCommandError::TwoCommands { .. }));
        assert_eq!(
            with_command("", &argv(&["a\0b"])).unwrap_err(),
            GuestCommandError::Nul
        );
    }
}
