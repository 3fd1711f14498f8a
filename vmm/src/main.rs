fn main() {
    eprintln!("sandbox-vmm: not built yet");
    std::process::exit(1);
}
