//! `containerd-shim-sandbox-v2`: the containerd runtime v2 shim of the sandbox runtime
//! (runtime type `io.containerd.sandbox.v2`).

fn main() {
    std::process::exit(runtime_shim::shim::main());
}
