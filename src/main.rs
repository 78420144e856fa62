// The binary crate stays free of proc-macros so that it can be linked statically
// (see .cargo/config.toml); everything lives in the library.
fn main() {
    std::process::exit(diqid::run(std::env::args().collect()));
}
