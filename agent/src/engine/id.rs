//! The one rule for container and exec ids, held by the engine, the agent's server and the
//! runtime alike. Ids become file names (state directories, cgroups, socket paths), so they
//! keep to a portable alphabet, well within NAME_MAX, and cannot be read as a flag or a
//! hidden or parent directory.

/// What [`id_problem`] accepts, for error messages.
pub const ID_RULE: &str = "1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'";
pub const MAX_ID_LEN: usize = 128;

/// Why `id` cannot name a container or an exec, if it cannot.
pub fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Some("must be 1 to 128 characters");
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Some("may not start with '.' or '-'");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Some("may only contain letters, digits, '_', '-' and '.'");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_rule() {
        for good in ["abc-1.2_3", "a", &"x".repeat(MAX_ID_LEN), "a..b"] {
            assert_eq!(id_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "../x",
            "..",
            "a/b",
            ".hidden",
            "-flag",
            "sp ace",
            "é",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(id_problem(bad).is_some(), "{bad}");
        }
    }
}
