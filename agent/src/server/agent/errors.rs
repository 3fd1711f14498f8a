//! How the agent's failures become protocol errors, and the checks on a request's fields
//! that answer `InvalidParams`.

use nix::sys::signal::Signal;

use crate::engine::{self, EngineError};
use crate::protocol::{ErrorCode, ErrorReply};

/// The engine's errors the client caused (a bad spec, a bad id, a request out of turn)
/// get their own codes so that a client can tell them from the engine failing.
pub(super) fn engine_error(e: EngineError) -> ErrorReply {
    let code = match &e {
        EngineError::Spec(_) | EngineError::InvalidId { .. } => ErrorCode::InvalidParams,
        EngineError::WrongState { .. } => ErrorCode::InvalidState,
        _ => ErrorCode::Engine,
    };
    ErrorReply::new(code, e.to_string())
}

pub(super) fn not_found(what: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::NotFound, format!("no {what}"))
}

pub(super) fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidParams, message)
}

pub(super) fn parse_signal(signal: i32) -> Result<Signal, ErrorReply> {
    Signal::try_from(signal).map_err(|_| invalid(format!("signal {signal}: not a signal number")))
}

/// Checked before anything is made, so that an id that cannot name a directory or a cgroup
/// never gets as far as the engine.
pub(super) fn check_id(what: &str, id: &str) -> Result<(), ErrorReply> {
    match engine::id_problem(id) {
        None => Ok(()),
        Some(problem) => Err(invalid(format!(
            "{what} {id:?}: {problem} ({})",
            engine::ID_RULE
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use super::*;
    use crate::engine::SpecError;

    #[test]
    fn client_mistakes_in_the_engine_are_invalid_params() {
        let bad_id = EngineError::InvalidId {
            id: "..".into(),
            problem: "may not start with '.' or '-'".into(),
        };
        let reply = engine_error(bad_id);
        assert_eq!(reply.code, ErrorCode::InvalidParams);
        assert_eq!(
            reply.message,
            "invalid container id \"..\": may not start with '.' or '-'"
        );

        let spec = EngineError::Spec(SpecError::new("process.args", "must not be empty"));
        let reply = engine_error(spec);
        assert_eq!(reply.code, ErrorCode::InvalidParams);
        assert_eq!(
            reply.message,
            "invalid spec: process.args: must not be empty"
        );
    }

    #[test]
    fn a_request_out_of_turn_is_invalid_state() {
        let reply = engine_error(EngineError::WrongState {
            expected: "created",
            actual: "running",
        });
        assert_eq!(reply.code, ErrorCode::InvalidState);
        assert_eq!(reply.message, "container is running, expected created");
    }

    #[test]
    fn everything_else_from_the_engine_is_an_engine_error() {
        let errors = [
            EngineError::sys("clone3", io::Error::from_raw_os_error(libc::EAGAIN)),
            EngineError::cgroup(
                PathBuf::from("/sys/fs/cgroup/c1"),
                "write memory.max",
                io::Error::from_raw_os_error(libc::EBUSY),
            ),
            EngineError::CgroupUnsupported("no pids controller".into()),
            EngineError::Child("exec \"nope\": No such file or directory".into()),
            EngineError::ChildVanished("signal 9".into()),
            EngineError::Hook("prestart hook 0 exited with 1".into()),
        ];
        for e in errors {
            let message = e.to_string();
            let reply = engine_error(e);
            assert_eq!(reply.code, ErrorCode::Engine, "{message}");
            assert_eq!(reply.message, message);
        }
    }

    #[test]
    fn not_found_and_invalid_carry_their_codes() {
        let reply = not_found(format_args!("container {:?}", "c1"));
        assert_eq!(reply.code, ErrorCode::NotFound);
        assert_eq!(reply.message, "no container \"c1\"");

        let reply = invalid("spec: missing field");
        assert_eq!(reply.code, ErrorCode::InvalidParams);
        assert_eq!(reply.message, "spec: missing field");
    }

    #[test]
    fn signal_numbers_are_checked() {
        assert_eq!(parse_signal(9).unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal(libc::SIGTERM).unwrap(), Signal::SIGTERM);
        for bad in [0, -1, 65, 1000] {
            let reply = parse_signal(bad).unwrap_err();
            assert_eq!(reply.code, ErrorCode::InvalidParams);
            assert_eq!(reply.message, format!("signal {bad}: not a signal number"));
        }
    }

    #[test]
    fn ids_follow_the_engine_rule() {
        for good in ["c1", "a.b-c_d", "X", &"a".repeat(engine::MAX_ID_LEN)] {
            assert!(check_id("container_id", good).is_ok(), "{good}");
        }
        let too_long = "a".repeat(engine::MAX_ID_LEN + 1);
        for bad in [
            "",
            ".hidden",
            "-flag",
            "a/b",
            "../x",
            "sp ace",
            too_long.as_str(),
        ] {
            let reply = check_id("exec_id", bad).unwrap_err();
            assert_eq!(reply.code, ErrorCode::InvalidParams, "{bad:?}");
            assert!(
                reply.message.starts_with(&format!("exec_id {bad:?}: ")),
                "{}",
                reply.message
            );
            assert!(reply.message.ends_with(&format!("({})", engine::ID_RULE)));
        }
    }
}
