// The vmm build script only builds the test guest used by the integration tests.
include!("test-guest/build.rs");
